import numpy as np
import pytest
import torch
from torch import nn

from neurokedro.evaluation.saliency import SALIENCY_METHODS, saliency_map
from neurokedro.models.sfcn import build_sfcn
from neurokedro.training.module import FoldEnsemble, TargetScaler

SHAPE = (16, 16, 16)
BLOCK = (slice(3, 7), slice(8, 12), slice(2, 6))  # the only voxels the linear model reads


def _block_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[BLOCK] = True
    return mask


class BlockLinear(nn.Module):
    """``sum(w * x)`` with w = 1 in BLOCK and 0 elsewhere; ``out`` picks the output's shape."""

    def __init__(self, out: str = "b1") -> None:
        super().__init__()
        weight = torch.zeros(1, *SHAPE)
        weight[(slice(None), *BLOCK)] = 1.0
        self.weight = nn.Parameter(weight)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x * self.weight).sum(dim=(1, 2, 3, 4))  # (B,)
        return {"b": y, "b1": y[:, None], "bs1": torch.stack([y, 3 * y], dim=1)[..., None],
                "b2": torch.stack([y, -y], dim=1), "voxelwise": x * self.weight}[self.out]


def _images(n=3, seed=0, dtype=np.float32) -> np.ndarray:
    # positive intensities (like a brain), so occluding a region always changes the output
    return (1.0 + np.random.default_rng(seed).uniform(0, 1, (n, 1, *SHAPE))).astype(dtype)


@pytest.mark.parametrize("method", ["vanilla_grad", "smooth_grad"])
def test_gradient_saliency_is_the_block_the_model_reads(method):
    model = BlockLinear()
    options = {"n_samples": 2} if method == "smooth_grad" else {}
    s = saliency_map(model, _images(dtype=np.float16), [0, 1, 2], method, **options)
    assert s.shape == SHAPE and s.dtype == np.float32 and np.isfinite(s).all()
    block = _block_mask()
    np.testing.assert_allclose(s[block], 1.0)  # d out / d x = 1 in the block ...
    np.testing.assert_array_equal(s[~block], 0.0)  # ... and 0 elsewhere


def test_occlusion_saliency_is_concentrated_on_the_block():
    s = saliency_map(BlockLinear(), _images(), [0, 1], "occlusion", batch_size=8, mask_size=4, overlap=0.5)
    assert s.shape == SHAPE and s.dtype == np.float32 and np.isfinite(s).all()
    assert s.min() >= 0 and s.max() <= 1
    block = _block_mask()
    assert s[block].mean() > 0.5 and s[block].mean() > 10 * s[~block].mean()
    # a voxel further than a mask from the block is only ever covered by occlusions that miss it
    near = np.zeros(SHAPE, dtype=bool)
    near[tuple(slice(max(b.start - 4, 0), b.stop + 4) for b in BLOCK)] = True
    assert np.abs(s[~near]).max() < 1e-3


def test_a_memory_mapped_store_gives_torch_writable_copies(tmp_path, monkeypatch):
    """A volume store loads read-only memory maps; a view of one handed to torch makes it warn
    ("The given NumPy array is not writable"). Each scan is copied out first, same map."""
    images = _images()
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    seen, as_tensor = [], torch.as_tensor

    def recording(data, *args, **kwargs):
        if isinstance(data, np.ndarray):
            seen.append(data.flags.writeable)
        return as_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", recording)
    s = saliency_map(BlockLinear(), mapped, [0, 2])
    assert seen == [True, True]
    np.testing.assert_array_equal(s, saliency_map(BlockLinear(), images, [0, 2]))


def test_every_scan_weighs_the_same_whatever_its_scale():
    class Squares(nn.Module):  # gradient 2x: proportional to the scan's intensities
        def forward(self, x):
            return (x**2).sum(dim=(1, 2, 3, 4))[:, None]

    images = np.zeros((2, 1, *SHAPE), dtype=np.float32)
    images[0, 0, :4] = 100.0  # a bright scan, non-zero in one slab
    images[1, 0, -4:] = 0.01  # a faint one, non-zero in another
    s = saliency_map(Squares(), images, [0, 1])
    np.testing.assert_allclose(s[:4], 0.5)
    np.testing.assert_allclose(s[-4:], 0.5)
    np.testing.assert_array_equal(s[4:-4], 0.0)
    alone = saliency_map(Squares(), images, [0])
    np.testing.assert_allclose(alone[:4], 1.0)
    np.testing.assert_array_equal(alone[4:], 0.0)


@pytest.mark.parametrize("out", ["b", "bs1"])
def test_scalar_and_slice_outputs_are_reduced_to_one_value_per_scan(out):
    expected = saliency_map(BlockLinear("b1"), _images(), [0, 1])
    np.testing.assert_allclose(saliency_map(BlockLinear(out), _images(), [0, 1]), expected)


@pytest.mark.parametrize("method", ["vanilla_grad", "occlusion"])
@pytest.mark.parametrize("out", ["b2", "voxelwise"])
def test_unsupported_outputs_raise(method, out):
    with pytest.raises(ValueError, match="one scalar output per scan"):
        saliency_map(BlockLinear(out), _images(), [0], method, **({"mask_size": 8} if method == "occlusion" else {}))


def test_bad_arguments_raise():
    model, images = BlockLinear(), _images()
    with pytest.raises(ValueError, match="unknown saliency method"):
        saliency_map(model, images, [0], "gradcam")
    with pytest.raises(ValueError, match="unknown option"):
        saliency_map(model, images, [0], "vanilla_grad", mask_size=4)
    with pytest.raises(ValueError, match="at least one scan"):
        saliency_map(model, images, [])
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        saliency_map(model, images[0], [0])
    assert set(SALIENCY_METHODS) == {"vanilla_grad", "smooth_grad", "occlusion"}


@pytest.mark.parametrize("method", ["vanilla_grad", "occlusion"])
def test_model_state_is_restored_and_every_scan_is_seen_in_eval_mode(method):
    torch.manual_seed(0)
    members = [TargetScaler(build_sfcn((1, *SHAPE), 1, channels=[2, 4], dropout=0.5), 50.0, 10.0) for _ in range(2)]
    model = FoldEnsemble(members, [0, 1]).train()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    images, options = _images(2), ({"mask_size": 8} if method == "occlusion" else {})
    one = saliency_map(model, images, [1], method, **options)
    # the same scan twice gives the same map: dropout and batch statistics stay off throughout
    np.testing.assert_allclose(saliency_map(model, images, [1, 1], method, **options), one, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert not frozen.requires_grad and all(p.requires_grad for p in list(model.parameters())[1:])
    assert all(p.grad is None for p in model.parameters())
    assert one.shape == SHAPE and 0 <= one.min() and one.max() <= 1 and one.max() > 0
