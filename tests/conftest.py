"""Shared fixtures; each group of fixtures lives in its own module under tests/fixtures."""

pytest_plugins = [
    "tests.fixtures.videos",
    "tests.fixtures.broker",
    "tests.fixtures.prefect",
    "tests.fixtures.dask",
    "tests.fixtures.models",
    "tests.fixtures.label_studio",
]


def pytest_configure(config) -> None:
    import torch

    # One intra-op thread for the torch work done in this process (the shared bundles, unit
    # tests of models and training steps). With a thread per core, each op's threads spin
    # waiting for each other while the broker, the servers and the Dask workers of the same
    # run (and other runs) hold the cores: tiny models then train several times slower.
    # Ranks on Dask workers and the CLI's processes set their own.
    torch.set_num_threads(1)
