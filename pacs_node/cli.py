"""The ``pacs-node`` command line."""

from __future__ import annotations

import enum
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pacs_node.config import ConfigError, Settings, load_settings, redacted_database_url
from pacs_node.users_cli import app as users_app

if TYPE_CHECKING:
    from pacs_node.ml.phantom.variation import Variation

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DICOM node that finds lung nodules on chest CT.")

DEFAULT_CONFIG = Path("config/pacs-node.toml")
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="TOML configuration file.")]


app.add_typer(users_app, name="user")


def _settings(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the node in the foreground until SIGTERM or Ctrl-C (systemd: ``Type=notify`` with a watchdog)."""
    from pacs_node.logs import configure_logging
    from pacs_node.monitoring import multiprocess

    settings = _settings(config)
    configure_logging(settings.logging.level, settings.logging.format)
    # before prometheus_client is imported (see there); metrics are counted for the console only
    metrics_dir = multiprocess.use_private_directory() if settings.console.enabled else None
    from pacs_node.monitoring.systemd import serve_until
    from pacs_node.node import Node

    try:
        try:
            node = Node(settings, metrics_dir=metrics_dir)
        except (OSError, ValueError) as exc:
            typer.echo(f"cannot start: {exc}", err=True)
            raise typer.Exit(1) from exc
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        node.start()
        doing = (f"receiving as {settings.node.ae_title} on {settings.node.bind_address}:{node.receiver.server.port}"
                 if node.receiver else f"roles {', '.join(settings.node.roles)}")
        serve_until(stop, node.health.liveness, doing)
        node.stop()
    finally:
        if metrics_dir is not None:
            multiprocess.remove(metrics_dir)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="TOML configuration file.")] = DEFAULT_CONFIG) -> None:
    """Validate a configuration file and print the effective settings."""
    settings = _settings(config)
    effective = settings.model_dump(mode="json")
    effective["storage"]["database_url"] = redacted_database_url(settings.storage.database_url)
    typer.echo(f"{config}: valid")
    typer.echo(json.dumps(effective, indent=2))


@app.command()
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(help="How many recent studies to list.")] = 20,
) -> None:
    """Print recent studies and their jobs."""
    from pacs_node.db.engine import make_engine
    from pacs_node.status import render_status

    settings = _settings(config)
    engine = make_engine(settings.storage.database_url)
    try:
        typer.echo(render_status(engine, limit, settings.storage))
    finally:
        engine.dispose()


@app.command()
def echo(
    target: Annotated[str | None, typer.Argument(help="AE@HOST:PORT of a DICOM node, or the base URL of a DICOMweb service.")] = None,
    destination: Annotated[str | None, typer.Option("--destination", "-d", help="Check this [[destinations]] entry of --config instead (its TLS and credentials).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title.")] = "PACS_NODE",
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 10.0,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="DICOM TLS: CA certificate(s) to verify the node with (PEM).")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="DICOM TLS: our client certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="DICOM TLS: the key of --tls-cert (PEM, unencrypted).")] = None,
    tls_server_name: Annotated[str | None, typer.Option("--tls-server-name", help="DICOM TLS: name the node's certificate must carry (default: HOST).")] = None,
) -> None:
    """C-ECHO a DICOM node, or QIDO-RS a DICOMweb service (GET {url}/studies?limit=1), and print the outcome.

    Any --tls-* option makes a C-ECHO DICOM TLS; for an https:// URL they set how the server is verified.
    """
    from pydantic import ValidationError

    from pacs_node.config import Destination, DestinationTLS
    from pacs_node.send.dicomweb import dicomweb_echo
    from pacs_node.send.echo import EchoError, c_echo, parse_target

    if (target is None) == (destination is None):
        typer.echo("give either AE@HOST:PORT / a DICOMweb URL, or --destination NAME", err=True)
        raise typer.Exit(2)
    label = f"C-ECHO {target}"
    try:
        if destination is not None:
            chosen = next((d for d in _settings(config).destinations if d.name == destination), None)
            if chosen is None:
                typer.echo(f"{config}: no [[destinations]] entry named {destination!r}", err=True)
                raise typer.Exit(2)
        else:
            tls = None
            if tls_ca or tls_cert or tls_key or tls_server_name:
                tls = DestinationTLS(ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, server_hostname=tls_server_name)
            if target.startswith(("http://", "https://")):
                chosen = Destination(name="echo", protocol="dicomweb", url=target, tls=tls)
            else:
                ae_title, host, port = parse_target(target)
                chosen = Destination(name="echo", ae_title=ae_title, host=host, port=port, tls=tls)
        if chosen.protocol == "dicomweb":
            label = f"QIDO-RS {chosen.url}"
            seconds = dicomweb_echo(chosen, chosen.timeout_s or timeout)
        else:
            label = f"C-ECHO {chosen.ae_title}@{chosen.host}:{chosen.port}"
            seconds = c_echo(chosen.ae_title, chosen.host, chosen.port, calling_ae=calling_ae,  # type: ignore[arg-type]
                             timeout_s=chosen.timeout_s or timeout, tls=chosen.tls)
    except ValidationError as exc:
        reasons = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        typer.echo(f"{label}: failed: {reasons}", err=True)
        raise typer.Exit(2) from exc
    except (ValueError, EchoError) as exc:
        typer.echo(f"{label}: failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{label}: success in {seconds * 1000:.0f} ms")


@app.command()
def resend(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID whose reports to deliver again.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Deliver a study's reports to every destination again (the same objects, same UIDs)."""
    from pacs_node.db.deliveries import resend_study
    from pacs_node.db.engine import make_engine
    from pacs_node.receive.spool import InvalidUID, validate_uid

    settings = _settings(config)
    try:
        study_uid = validate_uid(study_uid, "STUDY_UID")
    except InvalidUID as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if not settings.destinations:
        typer.echo(f"{config}: no [[destinations]] configured", err=True)
        raise typer.Exit(2)
    from pacs_node.db.retention import reports_purged

    engine = make_engine(settings.storage.database_url)
    try:
        purged = reports_purged(engine, study_uid)
        queued = 0 if purged else resend_study(engine, study_uid, settings.destinations)
    finally:
        engine.dispose()
    if purged:
        typer.echo("the report files of that study were deleted by retention ([retention] keep_reports = false); "
                   "nothing to resend", err=True)
        raise typer.Exit(1)
    if not queued:
        typer.echo("no finished report for that study", err=True)
        raise typer.Exit(1)
    typer.echo(f"queued {queued} deliver{'y' if queued == 1 else 'ies'}; the running node sends them")


@app.command()
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    seed: Annotated[int, typer.Option(help="Phantom seed: which synthetic patient to send.")] = 2026,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the report.")] = 300.0,
) -> None:
    """Send a synthetic chest CT to the running node and print the findings it reports back.

    Run `make run` in another terminal first; the demo acts as the scanner and as the
    PACS at the node's `local-demo` destination.
    """
    from pacs_node.config import Destination
    from pacs_node.demo import format_result, run_demo

    settings = _settings(config)
    target = next((d for d in settings.destinations if d.name == "local-demo"), None)
    if target is None:
        typer.echo(f"{config}: needs a [[destinations]] entry named local-demo for the demo to listen as", err=True)
        raise typer.Exit(2)
    node = Destination(name="node", ae_title=settings.node.ae_title, host="127.0.0.1", port=settings.node.port)
    try:
        result = run_demo(node, target.ae_title, target.port, seed=seed, timeout_s=timeout, say=typer.echo)
    except (RuntimeError, TimeoutError, OSError) as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(format_result(result))


_WIDE_HELP = "Draw every generator family (body, parenchyma, vessels, airways, pleura, nodules, acquisition) from its wide ranges, in any style; default: the classic (v1) generator."
_WITHOUT_HELP = "With --wide: keep this family classic (repeatable)."
_STYLES_HELP = "Comma-separated rendering styles to draw from (classic, lobular, mottled); default: all with --wide, classic otherwise."


def _variation(wide: bool, without: list[str] | None, styles: str | None) -> Variation:
    """The generator's :class:`~pacs_node.ml.phantom.variation.Variation` from --wide/--without/--styles; exit 2 if bad."""
    from pacs_node.ml.phantom.variation import STYLES, Variation

    try:
        if without and not wide:
            raise ValueError("--without needs --wide (it names families to keep classic)")
        names = tuple(n.strip() for n in styles.split(",")) if styles is not None else None
        if names is not None and not all(names):
            raise ValueError(f"--styles: empty style name in {styles!r}")
        if wide:
            return Variation.wide(without=without or (), styles=names or STYLES)
        return Variation(styles=names) if names else Variation.classic()
    except ValueError as exc:
        typer.echo(f"bad generator variation: {exc}", err=True)
        raise typer.Exit(2) from exc


class PhantomFormat(str, enum.Enum):
    dicom = "dicom"
    luna16 = "luna16"


@app.command()
def phantom(
    out: Annotated[Path, typer.Option("--out", help="Folder to write into.")],
    studies: Annotated[int, typer.Option(min=1, help="How many studies.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same studies.")] = 0,
    fmt: Annotated[PhantomFormat, typer.Option("--format", help="dicom: one CT series per study; luna16: .mhd/.raw and annotations.csv.")] = PhantomFormat.dicom,
    wide: Annotated[bool, typer.Option("--wide", help=_WIDE_HELP)] = False,
    without: Annotated[list[str] | None, typer.Option("--without", metavar="FAMILY", help=_WITHOUT_HELP)] = None,
    styles: Annotated[str | None, typer.Option("--styles", metavar="A,B", help=_STYLES_HELP)] = None,
    followup: Annotated[int, typer.Option("--followup", min=0, metavar="N", help="Write each study as a follow-up series of N time points of one patient (patient_0000/t0, t1, ... and followup.json): re-positioned, other breath-hold and protocol, nodules that grow, shrink, resolve or appear. DICOM only.")] = 0,
    interval_days: Annotated[float, typer.Option("--interval-days", min=1.0, help="With --followup: days between time points.")] = 365.0,
) -> None:
    """Generate synthetic chest CT studies with known nodules (ground truth beside them)."""
    from pacs_node.ml.phantom import generate_followups, generate_studies

    variation = _variation(wide, without, styles)
    if followup:
        if fmt != PhantomFormat.dicom:
            typer.echo("--followup writes DICOM studies only", err=True)
            raise typer.Exit(2)
        try:
            paths = generate_followups(out, studies, seed, followup, interval_days=interval_days, variation=variation)
        except ValueError as exc:
            typer.echo(f"bad follow-up: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"wrote {len(paths)} follow-up series of {followup} studies under {out}")
        return
    written = generate_studies(out, studies, seed, fmt.value, variation=variation)
    typer.echo(f"wrote {len(written)} {fmt.value} stud{'y' if len(written) == 1 else 'ies'} under {out}")


class DataFormat(str, enum.Enum):
    luna16 = "luna16"
    dicom = "dicom"
    phantom = "phantom"


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="Training data folder.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write, e.g. models/my-model.")],
    fmt: Annotated[DataFormat, typer.Option("--format", help="luna16 (subset*/*.mhd + annotations.csv), dicom (phantom studies) or phantom (generated cache).")] = DataFormat.luna16,
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for splits, sampling, augmentation and initialisation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda when available).")] = None,
    phantoms: Annotated[int, typer.Option(min=0, help="With --format phantom: how many synthetic studies to generate into --data (a cache).")] = 0,
    phantom_seed: Annotated[int, typer.Option(help="With --format phantom: seed of the synthetic set (never reuse an evaluation seed).")] = 20250,
    wide: Annotated[bool, typer.Option("--wide", help="With --format phantom: " + _WIDE_HELP)] = False,
    without: Annotated[list[str] | None, typer.Option("--without", metavar="FAMILY", help=_WITHOUT_HELP)] = None,
    styles: Annotated[str | None, typer.Option("--styles", metavar="A,B", help="With --format phantom: " + _STYLES_HELP)] = None,
    amp: Annotated[str, typer.Option(help="Mixed precision: auto (CUDA: bf16, else fp16; CPU: off), bf16, fp16 or off.")] = "auto",
    workers: Annotated[int, typer.Option(min=1, help="Processes building the patch cache.")] = 2,
    mine: Annotated[bool, typer.Option("--mine-hard-negatives/--no-mine-hard-negatives", help="From the second epoch, draw half of each batch's negatives from the tenth the model scores highest.")] = True,
    channels: Annotated[int, typer.Option(min=2, max=3, help="Input patches per candidate: 2 (24 mm fine, 48 mm context) or 3 (also 96 mm of 4 mm voxels, for nodules up to 30 mm with their surroundings).")] = 2,
    init_weights: Annotated[Path | None, typer.Option("--init-weights", help="Start from these weights (a weights.pt of the same architecture; a 2-channel model's fits a 3-channel network, its new kernels at zero).")] = None,
) -> None:
    """Train a nodule detector and write its model folder (weights + model card)."""
    from dataclasses import replace

    from pacs_node.ml.cases import PhantomSet
    from pacs_node.ml.mining import MiningParams
    from pacs_node.ml.precision import AMP_MODES
    from pacs_node.ml.train import TrainConfig
    from pacs_node.ml.train import train as run_training

    if fmt == DataFormat.phantom and phantoms < 1:
        typer.echo("--format phantom needs --phantoms N (studies to generate into --data)", err=True)
        raise typer.Exit(2)
    if fmt != DataFormat.phantom and (wide or without or styles is not None):
        typer.echo("--wide, --without and --styles apply to --format phantom only", err=True)
        raise typer.Exit(2)
    if amp not in AMP_MODES:
        typer.echo(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}", err=True)
        raise typer.Exit(2)
    variation = _variation(wide, without, styles)
    phantom_set = PhantomSet(count=phantoms, seed=phantom_seed, variation=variation) if phantoms else None
    if init_weights is not None and not init_weights.is_file():
        typer.echo(f"--init-weights {init_weights}: no such file", err=True)
        raise typer.Exit(2)
    base = TrainConfig()
    config = TrainConfig(name=out.name, phantoms=phantom_set, amp=amp, workers=workers,
                         mining=MiningParams() if mine else None, init_weights=init_weights,
                         network=replace(base.network, channels=channels),
                         samples=replace(base.samples, channels=channels))
    try:
        result = run_training(data, fmt.value, out, epochs=epochs, seed=seed, resume=resume, device=device,
                              config=config, progress=typer.echo)
    except ValueError as exc:
        typer.echo(f"cannot train: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"model written to {out}: {result}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Model folder, e.g. models/lung-nodule-synthetic-v1.")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation data folder.")],
    fmt: Annotated[DataFormat, typer.Option("--format", help="luna16 (subset*/*.mhd + annotations.csv) or dicom (study_*/series/*.dcm + truth.json).")] = DataFormat.luna16,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: evaluations/MODEL-DATA; never inside the model folder).")] = None,
    operating_point: Annotated[float, typer.Option("--operating-point", min=0.0, help="FPs/scan at which sensitivity by size and type is read (the model's own report_score is always reported too).")] = 1.0,
    max_scans: Annotated[int | None, typer.Option("--max-scans", min=1, help="Evaluate only the first N scans.")] = None,
    gallery: Annotated[int, typer.Option("--gallery", min=0, help="Draw the N worst misses and false positives (misses.png, false_positives.png); 0: none.")] = 8,
) -> None:
    """Score a model with the LUNA16 protocol: FROC, CPM, sensitivity by size and type, where nodules are lost."""
    from pacs_node.ml.evaluate import EvaluationError, default_out_dir, evaluate_model, format_summary
    from pacs_node.ml.modelcard import ModelError

    if fmt == DataFormat.phantom:
        typer.echo("evaluate takes --format luna16 or dicom", err=True)
        raise typer.Exit(2)
    out = out if out is not None else default_out_dir(model, data)
    try:
        report = evaluate_model(model, data, fmt.value, out, operating_point=operating_point, max_scans=max_scans,
                                gallery=gallery, progress=typer.echo)
    except (EvaluationError, ModelError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    typer.echo(format_summary(report, out))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
