"""The seeded split of datasets without an official one (HeadCT, BrainMRI, a user's folder without a normal
test folder), shared by their loaders.
"""

import numpy as np


def seeded_split(labels: np.ndarray, seed: int, n_test_normal: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices for a dataset without an official split (paper Sec. 4, "Evaluation
    Protocol"): `n_test_normal` random normals + all anomalies are the test set, the other normals train."""
    labels = np.asarray(labels)
    normal = np.flatnonzero(labels == 0)
    if not 0 < n_test_normal < len(normal):
        raise ValueError(f"n_test_normal must be in 1..{len(normal) - 1} ({len(normal)} normal images), "
                         f"got {n_test_normal}")
    held_out = np.random.default_rng(seed).choice(normal, size=n_test_normal, replace=False)
    train = np.setdiff1d(normal, held_out)
    test = np.union1d(held_out, np.flatnonzero(labels != 0))
    return train, test
