"""The [priors] section: sources like destinations, refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.config import ConfigError, load_settings
from pacs_node.config.priors import FIVE_YEARS_DAYS

_SOURCE = '[[priors.sources]]\nname = "pacs"\nae_title = "PACS"\nhost = "pacs.example.org"\nport = 104\n'


def _load(tmp_path: Path, text: str):  # noqa: ANN202
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_settings(path, environ={})


def test_off_by_default_with_a_five_year_lookback(tmp_path: Path) -> None:
    priors = _load(tmp_path, "").priors
    assert not priors.enabled and priors.sources == []
    assert priors.lookback_days == FIVE_YEARS_DAYS and priors.max_wait_s > 0
    assert (priors.recheck_minutes, priors.recheck_hours, priors.rechecking) == (0, 72, False), "no re-reports"


def test_rechecks_take_fractions_of_a_minute(tmp_path: Path) -> None:
    text = "[priors]\nenabled = true\nrecheck_minutes = 0.05\nrecheck_hours = 0.5\n" + _SOURCE
    priors = _load(tmp_path, text).priors
    assert (priors.recheck_minutes, priors.recheck_hours, priors.rechecking) == (0.05, 0.5, True)
    assert not _load(tmp_path, "[priors]\nrecheck_minutes = 60\n").priors.rechecking, "priors off: no rechecks"


def test_a_source_defaults_to_c_get(tmp_path: Path) -> None:
    priors = _load(tmp_path, "[priors]\nenabled = true\nmax_wait_s = 30\n" + _SOURCE).priors
    [source] = priors.sources
    assert (source.name, source.ae_title, source.port, source.retrieve, source.tls) == ("pacs", "PACS", 104, "get", None)
    assert priors.move_destination is None and priors.max_wait_s == 30


def test_move_and_tls_files_relative_to_the_config(tmp_path: Path) -> None:
    from tests.tls_certs import make_ca

    folder = tmp_path / "etc"
    (folder / "tls").mkdir(parents=True)
    ca = make_ca(folder / "tls", "ca", "Test CA")
    text = ('[priors]\nmove_destination = "NODE_STORE"\n' + _SOURCE
            + 'retrieve = "move"\ntls = { ca_file = "tls/ca.crt" }\n')
    priors = _load(folder, text).priors
    [source] = priors.sources
    assert source.retrieve == "move" and priors.move_destination == "NODE_STORE"
    assert source.tls is not None and source.tls.ca_file == ca.cert.resolve() == (folder / "tls" / "ca.crt").resolve()


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"priors\.sources\.0\.tls.*ca_file .*missing\.crt: no such file"):
        _load(tmp_path, _SOURCE + 'tls = { ca_file = "missing.crt" }\n')


def test_enabled_without_sources_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"priors: .*at least one \[\[priors.sources\]\]"):
        _load(tmp_path, "[priors]\nenabled = true\n")


@pytest.mark.parametrize(("text", "key"), [
    (_SOURCE.replace('"PACS"', '"MUCH_TOO_LONG_AE_TITLE"'), r"priors\.sources\.0\.ae_title"),
    (_SOURCE + 'retrieve = "ftp"\n', r"priors\.sources\.0\.retrieve"),
    (_SOURCE + "colour = 1\n", r"priors\.sources\.0\.colour: unknown key"),
    ("[priors]\nmax_wait_s = 0\n", r"priors\.max_wait_s"),
    ("[priors]\nlookback_days = 0\n", r"priors\.lookback_days"),
    ('[priors]\nmove_destination = "A\\\\B"\n', r"priors\.move_destination"),
    ("[priors]\nwait = 3\n", r"priors\.wait: unknown key"),
    ("[priors]\nrecheck_minutes = -1\n", r"priors\.recheck_minutes"),
    ("[priors]\nrecheck_hours = 0\n", r"priors\.recheck_hours"),
    ('[priors]\nrecheck_minutes = "often"\n', r"priors\.recheck_minutes"),
    ("[priors]\nrecheck_minutes = 120\nrecheck_hours = 1\n",
     r"priors: .*recheck_minutes \(120\) is longer than recheck_hours \(1 h\)"),
    (_SOURCE + _SOURCE, "prior source names must be unique; repeated: pacs"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _load(tmp_path, text)


def test_shipped_example_documents_priors() -> None:
    repo = Path(__file__).resolve().parents[1]
    settings = load_settings(repo / "config" / "production.example.toml", environ={})
    assert settings.priors.sources and settings.priors.sources[0].retrieve == "get"
