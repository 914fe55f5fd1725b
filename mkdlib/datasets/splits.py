"""Seeded normal/anomalous splits for datasets without an official one (paper Sec. 4, "Evaluation
Protocol": 10 random normal images + all anomalous ones for test, the other normals for training).
"""

import numpy as np


def seeded_split(labels: np.ndarray, seed: int, n_test_normal: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: `n_test_normal` random normals + all anomalies are the test set."""
    labels = np.asarray(labels)
    normal = np.flatnonzero(labels == 0)
    if not 0 < n_test_normal < len(normal):
        raise ValueError(f"n_test_normal must be in 1..{len(normal) - 1} ({len(normal)} normal images), "
                         f"got {n_test_normal}")
    held_out = np.random.default_rng(seed).choice(normal, size=n_test_normal, replace=False)
    train = np.setdiff1d(normal, held_out)
    test = np.union1d(held_out, np.flatnonzero(labels != 0))
    return train, test
