"""Settings from the environment (SPEC §2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgflow.config import get_settings
from surgflow.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("HOME", "KAFKA_BOOTSTRAP", "TOPIC_PREFIX", "DASK_ADDRESS", "VIDEO_ROOTS"):
        monkeypatch.delenv(f"SURGFLOW_{var}", raising=False)
    monkeypatch.chdir(tmp_path)
    s = get_settings()
    assert s.home == tmp_path / ".surgflow"
    assert s.kafka_bootstrap is None and s.dask_address is None
    assert s.topic("videos") == "surgflow.videos"
    assert s.resolved_video_roots() == [(tmp_path / ".surgflow").resolve(), tmp_path.resolve()]
    assert not (tmp_path / ".surgflow").exists(), "reading settings must not create anything"


def test_values_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SURGFLOW_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("SURGFLOW_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("SURGFLOW_TOPIC_PREFIX", "site1.")
    monkeypatch.setenv("SURGFLOW_VIDEO_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    s = get_settings()
    assert s.home == tmp_path / "h"
    assert s.kafka_bootstrap == "k1:9092,k2:9093"
    assert s.topic("dlq") == "site1.dlq"
    assert s.resolved_video_roots() == [tmp_path.resolve() / "a", tmp_path.resolve() / "b"]


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("SURGFLOW_KAFKA_BOOTSTRAP", "localhost", "SURGFLOW_KAFKA_BOOTSTRAP"),
        ("SURGFLOW_KAFKA_BOOTSTRAP", "host:99999", "host:99999"),
        ("SURGFLOW_TOPIC_PREFIX", "bad prefix/", "SURGFLOW_TOPIC_PREFIX"),
        ("SURGFLOW_TOPIC_PARTITIONS", "zero", "SURGFLOW_TOPIC_PARTITIONS"),
        ("SURGFLOW_FEEDBACK_CONFIDENCE_THRESHOLD", "1.5", "SURGFLOW_FEEDBACK_CONFIDENCE_THRESHOLD"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=expected):
        get_settings()


def test_importing_the_package_has_no_side_effects(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import importlib, logging, pkgutil, surgflow\n"
        "names = [m.name for m in pkgutil.walk_packages(surgflow.__path__, 'surgflow.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert len(names) > 40, names\n"
        "assert not logging.getLogger('surgflow').handlers\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == [], "importing created files"


def test_a_bad_value_is_one_line_naming_the_variable_the_rule_and_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SURGFLOW_TOPIC_PREFIX", "bad prefix/")
    monkeypatch.setenv("SURGFLOW_TOPIC_PARTITIONS", "0")
    with pytest.raises(ConfigError) as e:
        get_settings()
    assert str(e.value) == (
        "invalid configuration: SURGFLOW_TOPIC_PREFIX: topic prefix may use only letters, "
        "digits, '.', '_', '-': 'bad prefix/' (got 'bad prefix/'); "
        "SURGFLOW_TOPIC_PARTITIONS: Input should be greater than or equal to 1 (got '0')"
    )
