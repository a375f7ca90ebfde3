"""Mixed precision on image models: bf16 on the CPU here (Lightning runs bf16-mixed autocast on CPUs too), and CUDA
training in `gpu` tests, which are skipped with the reason where torch sees no GPU (run them with `pytest -m gpu`)."""
import numpy as np, pytest, torch
from factory import make_tiny_hf_vision, shared_home, write_image_folder
from aimass.registry import load
from aimass.training import train


@shared_home(scope="module")
def home(folder):
    return {"images": write_image_folder(folder/"digits", n_per_class=12), "resnet": make_tiny_hf_vision(folder/"tiny-resnet", "resnet")}


def _reloaded_outputs_match(run):
    files = list(np.load(run.version.path/"heldout.npz")["x"])
    np.testing.assert_allclose(load(run.version.ref).outputs(files), run.model.outputs(files), atol=1e-4)


@pytest.mark.slow
def test_bf16_mixed_trains_an_image_model_and_stores_float32_weights(home):
    r = train(f"hf:{home['resnet']}", home["images"], epochs=1, batch_size=8, precision="bf16-mixed", progress=False, name="bf16")
    assert r.status == "completed" and r.version.card.hparams["precision"] == "bf16-mixed"
    from aimass.models import read_state_dict
    assert {v.dtype for v in read_state_dict(r.version.path/"weights.safetensors").values() if v.is_floating_point()} == {torch.float32}
    _reloaded_outputs_match(r)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_cuda_training_of_an_image_model(home, precision):
    r = train(f"hf:{home['resnet']}", home["images"], epochs=2, batch_size=8, accelerator="gpu", devices=1,
              precision=precision, augment=True, progress=False, name=f"cuda-{precision}")
    assert r.status == "completed" and np.isfinite(r.history["train_loss"]).all()
    _reloaded_outputs_match(r)  # trained on the GPU, registered, reloaded and run on the CPU
