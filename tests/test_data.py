import numpy as np
import pytest
import torch

from charnn import CharnnError, StreamBatches, split_train_val
from charnn.data.batches import as_tensor, check_split_sizes, epoch_offset


def test_split_is_last_fraction():
    tokens = np.arange(1000)
    train, val = split_train_val(tokens, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert val[0] == 900 and train[-1] == 899


@pytest.mark.parametrize("offset", [0, 3, 7])
def test_window_k_plus_1_starts_where_window_k_targets_ended(offset):
    tokens = as_tensor(np.arange(1003, dtype=np.int64))
    batches = StreamBatches(tokens, batch_size=4, seq_len=10, offset=offset)
    assert len(batches) > 3
    stream_len = (1003 - offset) // 4
    for k in range(len(batches)):
        x, y = batches.window(k)
        assert x.shape == y.shape == (10, 4)
        assert torch.equal(y[:-1], x[1:])  # targets are inputs shifted by one
        for b in range(4):  # column b is contiguous text from stream b's start
            start = offset + b * stream_len + k * 10
            assert x[:, b].tolist() == list(range(start, start + 10))
        if k + 1 < len(batches):
            x_next, _ = batches.window(k + 1)
            assert torch.equal(x_next[0], y[-1])


def test_windows_cover_each_stream_once_without_overlap():
    tokens = as_tensor(np.arange(4 * 51, dtype=np.int64))
    batches = StreamBatches(tokens, batch_size=4, seq_len=10)
    seen = torch.cat([batches.window(k)[0] for k in range(len(batches))])  # (5*10, 4)
    assert len(batches) == 5
    assert torch.equal(seen, torch.arange(4 * 51).view(4, 51).t()[:50])


def test_epoch_offsets_are_seeded_and_vary():
    offsets = [epoch_offset(seed=1, epoch=e, seq_len=100) for e in range(20)]
    assert offsets[0] == 0
    assert offsets == [epoch_offset(seed=1, epoch=e, seq_len=100) for e in range(20)]
    assert len(set(offsets)) > 5 and all(0 <= o < 100 for o in offsets)


def test_too_small_splits_are_clear_errors():
    with pytest.raises(CharnnError, match="training split has 100 characters"):
        check_split_sizes(np.zeros(100), np.zeros(1000), batch_size=4, seq_len=32)
    with pytest.raises(CharnnError, match="validation split has 10 characters"):
        check_split_sizes(np.zeros(10_000), np.zeros(10), batch_size=4, seq_len=32)
    check_split_sizes(np.zeros(4 * 33), np.zeros(33), batch_size=4, seq_len=32)
