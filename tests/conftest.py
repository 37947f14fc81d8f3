"""Shared fixtures; each group of fixtures lives in its own module under tests/fixtures."""

pytest_plugins = [
    "tests.fixtures.videos",
    "tests.fixtures.broker",
    "tests.fixtures.prefect",
    "tests.fixtures.dask",
    "tests.fixtures.models",
    "tests.fixtures.label_studio",
    "tests.fixtures.privacy",
]


def pytest_configure(config) -> None:
    import os

    import torch

    # The tests of everything but privacy run on de-identified videos, the setting a site whose
    # videos are redacted upstream uses; the privacy tests (and the demo's) set "required",
    # the default, and show that nothing reaches people unscreened.
    os.environ["SURGFLOW_PRIVACY_SCREENING"] = "off"

    # One intra-op thread for the torch work done in this process (the shared bundles, unit
    # tests of models and training steps). With a thread per core, each op's threads spin
    # waiting for each other while the broker, the servers and the Dask workers of the same
    # run (and other runs) hold the cores: tiny models then train several times slower.
    # Ranks on Dask workers and the CLI's processes set their own.
    torch.set_num_threads(1)
