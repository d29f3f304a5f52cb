"""``medscan <command> ...``: one console script for every job.

Hydra jobs take ``key=value`` overrides and ``-m``/``--multirun``::

    medscan segment input=/data/ct output=out backend=cpu
    medscan segment --help      # usage, the job's keys and config groups (conf/hydra/help/)
    medscan -h

Plain commands (``inspect``, ``view``) take ordinary arguments.

Before a command starts, :func:`main` checks two things a newcomer trips over, so that they end in
one line on stderr and exit code 2 instead of a traceback or half-made output folders:

- the optional extra the command needs is installed (:data:`NEEDS`, :func:`missing_extra`);
- the paths the job reads exist (:data:`INPUT_KEYS`, :func:`check_inputs`), *before* Hydra makes
  its run folder under ``output``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Hydra jobs: command -> module in ``medscan_jobs`` (the repository's ``jobs/``).
HYDRA_JOBS = {
    "segment": "Segment CT series: tissues, lungs, measurements, meshes, previews.",
    "measure": "Recompute CT metrics from existing label maps (cases, or NIfTI pairs).",
    "train": "Train the chest X-ray classifier.",
    "evaluate": "Evaluate a classifier checkpoint with clinical metrics.",
    "predict": "Predict PNEUMONIA/NORMAL for images or folders (optional Grad-CAM).",
    "export": "Export a classifier checkpoint to ONNX and TorchScript.",
}

#: Plain commands: command -> (module, help).
PLAIN_COMMANDS = {
    "inspect": ("medscan.dicom.inspect", "List DICOM series and QC findings under a folder."),
    "view": ("medscan.napari.view", "Open a case, batch output or DICOM folder in napari."),
}

#: Top-level modules of each optional extra (pyproject.toml ``[project.optional-dependencies]``):
#: a missing one of these names the extra to install.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("scipy", "skimage", "cc3d", "trimesh", "fast_simplification",
                     "matplotlib", "PIL"), "ct"),
    **dict.fromkeys(("torch", "torchvision", "timm", "sklearn", "onnx", "onnxruntime",
                     "pytorch_grad_cam"), "xray"),
    **dict.fromkeys(("napari", "npe2", "qtpy", "PyQt6"), "viewer"),
    **dict.fromkeys(("submitit", "hydra_plugins.hydra_submitit_launcher"), "hpc"),
    **dict.fromkeys(("cupy", "cucim", "warp"), "gpu"),
}

_XRAY = ("torch", "torchvision", "timm", "sklearn")
#: Modules each command imports beyond the core install (checked before it starts).
NEEDS: dict[str, tuple[str, ...]] = {
    "segment": ("scipy", "skimage", "cc3d", "trimesh", "fast_simplification", "matplotlib"),
    "measure": ("scipy", "trimesh"),
    "train": (*_XRAY, "matplotlib"),
    "evaluate": (*_XRAY, "matplotlib"),
    "predict": _XRAY,
    "export": (*_XRAY, "onnx", "onnxruntime"),
    "view": ("napari", "npe2", "scipy", "skimage", "trimesh"),
}

#: Config keys of each Hydra job that name files or folders the job reads.
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "segment": ("input",),
    "measure": ("input", "volume", "labels", "label_table"),
    "train": ("data.root",),
    "evaluate": ("checkpoint", "data.root"),
    "predict": ("checkpoint", "input"),
    "export": ("checkpoint",),
}

#: Arguments after which a command only prints (help, config): no checks, nothing is run.
_INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion"}


class UsageError(Exception):
    """A problem found before a command starts (one line for stderr; exit code 2)."""


def _usage() -> str:
    lines = ["usage: medscan <command> [args]", "", "Hydra jobs (key=value overrides, -m):"]
    lines += [f"  {name:<10} {text}" for name, text in HYDRA_JOBS.items()]
    lines += ["", "Commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in PLAIN_COMMANDS.items()]
    lines += ["", "Run `medscan <command> --help` for the options of one command."]
    return "\n".join(lines)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken install
        return False


def extra_message(command: str, module: str) -> str:
    """One line telling which extra to install for ``command`` when ``module`` is missing."""
    extra = EXTRA_OF_MODULE.get(module) or EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return f"medscan {command}: the Python module {module!r} is not installed"
    return (f"medscan {command} needs the {extra} extra ({module} is not installed): "
            f"pip install 'medscan[{extra}]' (in a clone: pip install -e '.[{extra}]')")


def missing_extra(command: str, args: list[str]) -> str | None:
    """The one-line message for the first module ``command`` needs that is not installed.

    Also checks ``hydra/launcher=...`` overrides (the ``hpc`` extra). Returns None when all
    are there.
    """
    needed = list(NEEDS.get(command, ()))
    if any(a.startswith(("hydra/launcher=", "+hydra/launcher=")) for a in args):
        needed += ["submitit", "hydra_plugins.hydra_submitit_launcher"]
    for module in needed:
        if not _installed(module):
            return extra_message(command, module)
    return None


def _values(value: Any) -> list[Any]:
    from omegaconf import ListConfig

    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def check_inputs(command: str, overrides: list[str], multirun: bool) -> None:
    """Raise :class:`UsageError` when a path the job reads does not exist or is not given.

    A single run composes the job's config with Hydra's compose API (no run folder, no
    output) and checks :data:`INPUT_KEYS` and the mandatory (``???``) keys; a multirun checks
    every value of the swept input keys given on the command line. Configs Hydra cannot
    compose are left to Hydra, which reports them itself (before it creates anything).
    """
    keys = INPUT_KEYS.get(command, ())
    if not multirun and _check_given_inputs(command, keys, overrides):
        return
    if multirun:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except Exception:  # Hydra's own error message is better
            return
        for ov in parsed:
            if ov.key_or_group not in keys or ov.is_delete():
                continue
            values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [
                ov.value()]
            for value in values:
                _check_path(command, ov.key_or_group, value)
        return
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():  # inside another Hydra app: leave it alone
        return
    try:
        with initialize_config_module("medscan_conf", version_base="1.3"):
            cfg = compose(config_name=command, overrides=overrides)
    except Exception as exc:  # an unknown key or option: one line; others: Hydra reports them
        message = _composition_error(command, exc)
        if message:
            raise UsageError(message) from None
        return
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if k.split(".")[0] != "hydra")
    if missing:
        raise UsageError(f"medscan {command}: missing {', '.join(missing)} "
                         f"(give {missing[0]}=...; see medscan {command} --help)")
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception:
            continue
        for item in _values(value):
            _check_path(command, key, item)


def _composition_error(command: str, exc: BaseException) -> str | None:
    """One line for an override naming a key or a config-group option the job does not have.

    Hydra's own messages for these end the job with exit 1 (the exit code of a failed case)
    and several lines; this one names the key or option and where to look. None for other
    composition errors (Hydra reports those itself).
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text, re.M)
        if found and options:
            group, _, option = found.group(1).rpartition("/")
            return (f"medscan {command}: config group {group} has no option {option!r} "
                    f"(available: {', '.join(options)})")
        return None
    found = re.match(r"Could not override '([^']+)'", text)
    if isinstance(exc, ConfigCompositionException) and found and "not in struct" in str(
            exc.__cause__):
        return (f"medscan {command}: unknown key {found.group(1)!r} (not in its config; "
                f"see medscan {command} --help)")
    return None


def _known_top_keys(command: str, text: str) -> set[str] | None:
    """Top-level keys ``command``'s composed config can have, read from the YAML (cheap).

    The job file's own keys, its defaults list's config groups and their ``# @package``
    targets, and ``hydra``. None when the file cannot be read as expected.
    """
    import yaml

    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(cfg, dict):
        return None
    known = {k for k in cfg if k != "defaults"} | {"hydra"}
    from importlib.resources import files

    for entry in cfg.get("defaults") or []:
        if not isinstance(entry, dict):
            continue
        for key in entry:
            group = str(key).removeprefix("override ").strip()
            if "/" in group:
                continue
            known.add(group)
            with contextlib.suppress(OSError, ModuleNotFoundError):
                for option in (files("medscan_conf") / group).iterdir():
                    if option.name.endswith(".yaml"):
                        head = option.read_text(encoding="utf-8").split("\n", 1)[0]
                        if head.startswith("# @package "):
                            known.add(head.removeprefix("# @package ").strip().split(".")[0])
    return known


def _is_option(key: str, value: str) -> bool:
    """False only when ``key`` is a config group of ``conf/`` without the option ``value``."""
    from importlib.resources import files

    try:
        group = files("medscan_conf") / key
        if not group.is_dir():
            return True
        return (group / f"{value}.yaml").is_file()
    except (OSError, ModuleNotFoundError):
        return True


def _conf_text(name: str) -> str | None:
    """Raw text of ``conf/<name>.yaml`` (the ``medscan_conf`` package), None when absent."""
    from importlib.resources import files

    try:
        return (files("medscan_conf") / f"{name}.yaml").read_text(encoding="utf-8")
    except (OSError, ModuleNotFoundError):
        return None


def _check_given_inputs(command: str, keys: tuple[str, ...], overrides: list[str]) -> bool:
    """Check the input keys given as plain ``key=value`` overrides without composing.

    Composing the config with Hydra costs about a third of a second of process start (issue
    15); it is only needed when the job has mandatory (``???``) keys or an input key comes from
    the config. Returns True when this check was enough (raises :class:`UsageError` like
    :func:`check_inputs`), False when the config must be composed.
    """
    text = _conf_text(command)
    if text is None or "???" in text:
        return False
    known = _known_top_keys(command, text)
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.startswith(("+", "~")):
            continue
        if known is None or key not in known or not _is_option(key, value):
            return False  # compose: an unknown key or option is one line, exit 2; nested
            # keys (segment.x=...) are checked by composing too
        given[key] = value
    if not all(key in given for key in keys):
        return False
    for key in keys:
        value = given[key]
        if value.startswith(("[", "'", '"')) or "${" in value or "," in value:
            return False  # lists, quoting, interpolation: Hydra's parser decides
        if value.lower() not in ("null", "none", ""):
            _check_path(command, key, value)
    return True


def static_help(command: str) -> str | None:
    """``command``'s help text when it is static, else None (then Hydra prints it).

    The Hydra jobs select their own help template (``conf/hydra/help/<command>.yaml``); one
    without ``$`` placeholders (``$CONFIG``, ``$APP_CONFIG_GROUPS``, ...) is printed as Hydra
    would print it, without importing Hydra and composing the config (issue 15: ``--help``
    under half a second).
    """
    job = _conf_text(command)
    if job is None or f"override hydra/help: {command}" not in job:
        return None
    text = _conf_text(f"hydra/help/{command}")
    if text is None:
        return None
    import yaml

    template = (yaml.safe_load(text) or {}).get("template")
    if not isinstance(template, str) or "$" in template:
        return None
    return template


#: An override Hydra's grammar surely reads as one plain value (no parser needed).
_PLAIN_OVERRIDE = re.compile(r"[+~]{0,2}[\w./@-]+(=[\w./:+-]*)?", re.ASCII)
#: Characters Hydra reads in an unquoted value (its OverrideLexer's ID, UNQUOTED_CHAR, spaces).
_UNQUOTED = re.compile(r"[\w/\\+.$%*@?|: =-]", re.ASCII)


def check_overrides(command: str, overrides: list[str], multirun: bool) -> None:
    """Raise :class:`UsageError` for an override Hydra's parser refuses, with the fix.

    Archive paths carry characters Hydra's override grammar reserves or does not read unquoted
    (DICOM person names are ``FAMILY^GIVEN``; ``~``, ``#``, ``&``, ``;``, brackets, braces,
    non-ASCII letters), and a ``,`` makes a value a sweep. Hydra then ends with a lexer
    message and exit 1; this says which override, which character, and how to quote it
    (one line, exit 2, before anything is made).
    """
    if all(_PLAIN_OVERRIDE.fullmatch(o) for o in overrides):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for item in overrides:
        key, _, value = item.partition("=")
        if "'" not in value:
            hint = (f"quote the value for Hydra: {key}='{value}' (in a shell, keep those "
                    f"quotes: \"{key}='{value}'\")")
        else:
            hint = (f"quote the value for Hydra: {key}=\"{value}\" (one argument, quotes "
                    "kept; escape the value's quote for your shell)")
        try:
            (override,) = parser.parse_overrides([item])
        except OverrideParseException:
            bad = next((c for c in value if not _UNQUOTED.fullmatch(c)), None)
            why = (f"'{bad}' cannot stand unquoted in its override grammar" if bad
                   else "its override grammar")
            raise UsageError(f"medscan {command}: Hydra cannot read {item} ({why}); "
                             f"{hint}") from None
        if override.is_sweep_override() and not multirun:
            raise UsageError(f"medscan {command}: Hydra reads {item} as several values (a "
                             f"sweep, for -m); for one value {hint}")


def _check_path(command: str, key: str, value: Any) -> None:
    if value is None or value == "" or (isinstance(value, str) and "${" in value):
        return
    if not Path(str(value)).exists():
        raise UsageError(f"medscan {command}: {key} {value} does not exist")


def _wants_info(args: list[str]) -> bool:
    return any(a in _INFO_FLAGS or a.startswith(("--cfg=", "--info=")) for a in args)


def _preflight(command: str, rest: list[str]) -> None:
    if _wants_info(rest):
        return
    message = missing_extra(command, rest)
    if message:
        raise UsageError(message)
    if command in HYDRA_JOBS:
        multirun = any(a in {"-m", "--multirun"} for a in rest)
        overrides = [a for a in rest if not a.startswith("-")]
        check_overrides(command, overrides, multirun)
        check_inputs(command, overrides, multirun)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``medscan <command> ...`` and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in PLAIN_COMMANDS and command not in HYDRA_JOBS:
        print(f"medscan: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command in HYDRA_JOBS and rest in (["--help"], ["-h"]):
        text = static_help(command)
        if text is not None:
            print(text)
            return 0
    from medscan.interrupt import Terminated, terminate_as_exception

    try:
        with terminate_as_exception():  # SIGTERM/SIGHUP unwind like Ctrl-C: workers killed
            _preflight(command, rest)
            return _run_or_answer(command, rest)
    except KeyboardInterrupt:
        print(_stopped(command, "SIGINT (Ctrl-C)"), file=sys.stderr)
        return 130  # as a process killed by SIGINT (128 + 2)
    except Terminated as exc:
        print(_stopped(command, signal_name(exc.signum)), file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:  # `medscan inspect ... | head`: the reader has gone, stop quietly
        _silence_stdout()
        return 141  # as a process killed by SIGPIPE (128 + 13)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except RuntimeError as exc:  # an unusable pseudonym secret: one line, exit 2, any command
        from medscan.dicom.identity import SecretError

        if not isinstance(exc, SecretError):
            raise
        print(f"medscan {command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an extra's module the checks above did not list
        if not exc.name or exc.name.split(".")[0] not in {
                m.split(".")[0] for m in EXTRA_OF_MODULE}:
            raise
        print(extra_message(command, exc.name.split(".")[0]), file=sys.stderr)
        return 2


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, etc."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _stopped(command: str, what: str) -> str:
    """One line for a job stopped by a signal (instead of a traceback)."""
    line = f"medscan {command}: stopped by {what}"
    if command == "segment":
        line += ("; finished cases are complete and kept, unfinished ones left nothing behind: "
                 "the same command again resumes")
    return line


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again.

    Recipe of the Python documentation (``signal``, "Note on SIGPIPE").
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor
        pass
    finally:
        os.close(devnull)


def _run_or_answer(command: str, rest: list[str]) -> int:
    """Answer a no-op rerun from its record (:mod:`medscan.rerun`), else run the command."""
    from medscan import rerun

    code = rerun.answer(command, rest)
    if code is not None:
        return code
    rerun.arm(command, rest)
    try:
        return _run(command, rest)
    finally:
        rerun.disarm()


def _run(command: str, rest: list[str]) -> int:
    if command in PLAIN_COMMANDS:
        module = importlib.import_module(PLAIN_COMMANDS[command][0])
        return int(module.main(rest) or 0)
    module = importlib.import_module(f"medscan_jobs.{command}")
    try:
        with _hydra_argv(command, rest):
            result = module.main()
    except SystemExit as exc:  # hydra exits on --help / --cfg
        return int(exc.code or 0)
    return int(result or 0)


@contextmanager
def _hydra_argv(command: str, rest: list[str]) -> Iterator[None]:
    """``sys.argv`` as Hydra's ``@hydra.main`` reads it, for the call only.

    ``hydra.main`` parses ``sys.argv`` itself (``get_args_parser().parse_args()``, no argv
    parameter), so the job sees ``["medscan <command>", *rest]``; the caller's ``sys.argv``
    (a test runner's, a notebook's) is put back afterwards, whatever the job raised.
    """
    saved = sys.argv
    sys.argv = [f"medscan {command}", *rest]
    try:
        yield
    finally:
        sys.argv = saved


def entry() -> None:
    """The ``medscan`` console script: :func:`main`, then :func:`~medscan.process_exit.end_process`.

    The process ends without the interpreter's module teardown (0.3-0.6 s; see
    :mod:`medscan.process_exit`); ``main()`` called from Python returns as before.
    """
    from medscan.process_exit import end_process

    end_process(main())


if __name__ == "__main__":
    entry()
