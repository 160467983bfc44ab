"""The tiny profile the reliability tests damage and rebuild: 4 digits runs of a depth-1, width-16 model."""

TINY_PROFILE = """
description = "reliability tests: 4 tiny runs"
[data]
dataset = "digits"
n_train = 200
n_test = 100
[model]
patch_size = 4
depth = 1
heads = 2
[train]
max_epochs = 3
warmup_epochs = 1
checkpoint_epochs = [2]
[grid]
variant = ["crate", "crate-c"]
lr = [0.003, 0.01]
batch_size = [32]
width = [16]
"""


def runs_of(profile):
    """The run configurations of a profile, as `srrbench zoo` hands them to ``zoo.build_zoo``."""
    from zoo.runner import dataset_shape
    return profile.runs(*dataset_shape(profile.data, None))
