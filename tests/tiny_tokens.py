"""A user's own text model for the serving tests, as a user module would hold it: `TinyTokens` takes the contract's
int64 tokens `(N, K, L)` (K: input_ids, attention_mask[, token_type_ids]), embeds them, mean-pools over the attention
mask and applies a linear head. `make_token_version` trains it briefly on `factory.text_frame` texts and registers it
the way `aimass.train` stores a version: a card with the "text" Preprocessor (its tokenizer embedded), a class spec,
the weights, and `heldout.npz` holding the held-out texts (tokenised by the version's own Preprocessor wherever used).

    from tiny_tokens import make_token_version
    mv = make_token_version()            # topics-tokens:v1, texts -> faces / medicine / plants
    mv = make_token_version(pair=True)   # pairs (text, title)
"""
import numpy as np
import torch
from torch import nn


class TinyTokens(nn.Module):
    "int64 tokens `(N, K, L)` -> embedding (+ token types) -> mean over the attention mask -> tanh -> linear: class logits."
    def __init__(self, vocab_size: int, num_classes: int = 3, dim: int = 16, types: bool = True):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.types = nn.Embedding(2, dim) if types else None
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        ids, mask = tokens[:, 0], tokens[:, 1].unsqueeze(-1).float()
        h = self.emb(ids)
        if self.types is not None: h = h + self.types(tokens[:, 2])
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(torch.tanh(pooled))


def token_preprocessor(max_length: int = 32, pair: bool = False, types: bool = True):
    "The 'text' Preprocessor over a small WordPiece tokenizer trained on the topics' texts."
    from aimass.data import Preprocessor
    from aimass.texts import TextTokenizer
    from factory import _train_wordpiece, text_frame
    tok = _train_wordpiece(list(text_frame(200, seed=1)["text"]), vocab_size=300)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    return Preprocessor.for_texts(TextTokenizer(tok.to_str(), inputs=inputs), inputs, max_length=max_length, pair=pair)


def make_token_version(name: str = "topics-tokens", n: int = 120, epochs: int = 60, test_every: int = 4, seed: int = 0,
                       pair: bool = False, max_length: int = 32):
    "Train `TinyTokens` on `text_frame(n)` (every `test_every`-th row held out) and register it as `name`."
    from factory import text_frame
    df = text_frame(n, seed=seed)
    rows = df[["text", "title"]].to_numpy().tolist() if pair else df["text"].tolist()
    classes = sorted(df.label.unique())
    y = df.label.map({c: k for k, c in enumerate(classes)}).to_numpy(np.int64)
    test = np.arange(len(df)) % test_every == 0
    pre = token_preprocessor(max_length, pair)
    kwargs = {"vocab_size": pre.tokenizer.vocab_size, "num_classes": len(classes)}
    from factory import register_trained_module
    return register_trained_module(name, TinyTokens, kwargs, pre, rows, y, classes, test, lr=3e-2, epochs=epochs,
                                   seed=seed, data_name="topics")
