"""Helpers of the package on their own: the conversion of validated rows to tensors (a read-only
array in a fit and in scoring: tests/test_estimator.py)."""

from __future__ import annotations

import numpy as np
import torch

from skffjord._utils import float64_tensor


def test_read_only_input_is_copied_not_shared():
    """A read-only array (pandas' copy-on-write frames give one) becomes a tensor of its
    own; a writable one is shared, not copied."""
    X = np.arange(6.0).reshape(3, 2)
    shared = float64_tensor(X, torch.device("cpu"))
    assert np.shares_memory(shared.numpy(), X)
    X.setflags(write=False)
    copied = float64_tensor(X, torch.device("cpu"))
    assert not np.shares_memory(copied.numpy(), X)
    np.testing.assert_array_equal(copied.numpy(), X)
