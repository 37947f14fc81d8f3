"""Shared fixtures; each group of fixtures lives in its own module under tests/fixtures."""

pytest_plugins = [
    "tests.fixtures.videos",
    "tests.fixtures.broker",
    "tests.fixtures.prefect",
    "tests.fixtures.dask",
    "tests.fixtures.models",
]
