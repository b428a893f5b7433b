"""grain pipelines: contract checks, paired augmentation, process slices, exact resumption."""

import numpy as np
import pytest

from mars_jax.data.contract import check_pretraining_example
from mars_jax.data.pipeline import PairedAugment, make_pipeline, per_process_batch_size


class CodedSource:
    """Examples whose pixels encode (example, row, col): any misplacement is detectable."""

    def __init__(self, length=24, size=16, sar_channels=2):
        self.length, self.size, self.sar_channels = length, size, sar_channels

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        rows, cols = np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="ij")
        optical = np.stack([np.full_like(rows, index), rows, cols], -1).astype(np.uint8)
        code = (index * 10000 + rows * 100 + cols).astype(np.float32)
        sar = np.stack([code, -code][: self.sar_channels], -1)
        return {"optical": optical, "sar": sar, "valid": (rows + cols) % 3 > 0,
                "id": np.asarray(f"scene{index}")}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_follow_the_contract():
    it = iter(make_pipeline(CodedSource(), global_batch_size=4, crop_size=8))
    batch = next(it)
    assert set(batch) == {"optical", "sar", "valid"}
    assert batch["optical"].shape == (4, 8, 8, 3) and batch["optical"].dtype == np.uint8
    assert batch["sar"].shape == (4, 8, 8, 2) and batch["sar"].dtype == np.float32
    assert batch["valid"].shape == (4, 8, 8) and batch["valid"].dtype == bool


def test_augmentation_moves_both_modalities_and_labels_together():
    source = CodedSource(size=16)
    augment = PairedAugment(crop_size=8)
    rng = np.random.default_rng(0)
    seen_turns = set()
    for i in range(40):
        ex = source[i % len(source)]
        out = augment.random_map(dict(ex), rng)
        # optical carries (row, col); sar codes the same pixel; valid was a function of them
        rows, cols = out["optical"][..., 1].astype(int), out["optical"][..., 2].astype(int)
        np.testing.assert_array_equal(out["sar"][..., 0], ex["sar"][rows, cols, 0])
        np.testing.assert_array_equal(out["valid"], ex["valid"][rows, cols])
        assert out["id"] == ex["id"]
        # the crop is a contiguous 8x8 window of the original, possibly flipped / rotated
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        seen_turns.add((rows[0, 0] < rows[-1, 0], cols[0, 0] < cols[0, -1],
                        rows[0, 0] == rows[0, -1]))
    assert len(seen_turns) >= 4  # flips and rotations really happen


def test_every_example_once_per_epoch_and_reshuffled():
    source = CodedSource(length=12)
    it = iter(make_pipeline(source, global_batch_size=4, seed=3, flips=False, rotations=False))
    epochs = [np.concatenate([b["optical"][:, 0, 0, 0] for b in take(it, 3)]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert not np.array_equal(epochs[0], epochs[1])


def test_processes_read_their_rows_of_the_same_global_batches():
    source = CodedSource(length=16)
    kw = dict(global_batch_size=8, num_epochs=1, seed=5, crop_size=8)
    single = list(iter(make_pipeline(source, **kw)))
    parts = [list(iter(make_pipeline(source, process_index=p, process_count=2, **kw)))
             for p in range(2)]
    assert len(single) == len(parts[0]) == len(parts[1]) == 2
    for whole, first, second in zip(single, *parts, strict=True):
        assert first["optical"].shape[0] == second["optical"].shape[0] == 4
        for key in whole:  # same examples, same augmentation, same order
            np.testing.assert_array_equal(
                np.concatenate([first[key], second[key]]), whole[key], err_msg=key)


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_continues_exactly(workers):
    source = CodedSource(length=10)
    kw = dict(global_batch_size=3, seed=7, crop_size=8, worker_count=workers)
    it = iter(make_pipeline(source, **kw))
    take(it, 4)  # into the second epoch
    state = it.get_state()
    expected = take(it, 5)
    resumed = iter(make_pipeline(source, **kw))
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 5), expected)


def test_workers_do_not_change_the_batches():
    source = CodedSource(length=10)
    kw = dict(global_batch_size=2, seed=1, crop_size=8)
    assert_batches_equal(take(iter(make_pipeline(source, worker_count=0, **kw)), 4),
                         take(iter(make_pipeline(source, worker_count=2, **kw)), 4))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="does not divide across 3 processes"):
        per_process_batch_size(8, 3)
    bad = dict(CodedSource()[0])
    bad["sar"] = bad["sar"].astype(np.float64)
    with pytest.raises(ValueError, match=r"'sar' must be float32 \[H, W, C\] in dB, got float64"):
        check_pretraining_example(bad)
    with pytest.raises(KeyError, match=r"lacks keys \['valid'\]"):
        check_pretraining_example({"optical": bad["optical"], "sar": bad["sar"]})
    with pytest.raises(ValueError, match="crop_size 32 exceeds the example size 16x16"):
        next(iter(make_pipeline(CodedSource(), global_batch_size=2, crop_size=32)))
