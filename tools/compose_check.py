"""Checks that the Compose files keep the promises training depends on.

    python -m tools.compose_check compose.yaml [OVERRIDE.yaml ...] [--env-file .env]

The first file is the base; every further file is checked as an alternative override of it (base + that
file, as `docker compose -f base -f override` merges them). Each configuration must: parse; reserve GPUs by
count or by device_ids, never both; mount every folder the trainer writes (output, backups, logs)
read-write where the container-side settings point; give the trainer more time to stop than its
save-on-SIGTERM bound; run an init process; give DataLoader workers shared memory; and not restart forever
on a configuration error. The path settings that .env passes through unchanged (PRETRAINED_CHECKPOINT,
VOCAB_FILE, QUARANTINE_DIR) must name a place inside the train service's mounts. Each file is also validated against the Compose specification's JSON schema
(the copy vendored by check-jsonschema) when that package is installed.

Variables are interpolated from --env-file only (not from this process's environment), so without it the
files' own defaults are checked. Prints one line per problem; exits 0 when there is none, else 1.

PyYAML and the schema are test-time dependencies: this module is never imported by the preflight.
"""

from __future__ import annotations

import argparse
import copy
import json
import posixpath
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from entrypoint.settings import TRUE_WORDS

# The trainer saves model_last.pt and exits within this many seconds of SIGTERM; the Compose files must
# wait longer than this before Docker's SIGKILL. Keep it equal to the bound the trainer documents.
SIGTERM_SAVE_BOUND_S = 120
# Docker's default /dev/shm; a shm_size that is not larger changes nothing.
DOCKER_DEFAULT_SHM_BYTES = 64 * 1024**2
TRAIN_SERVICE = "train"
WRITTEN_DIRS = ("OUTPUT_DIR", "BACKUP_DIR", "LOG_DIR")
READ_DIRS = ("DATASET_DIR",)
# Path settings that Compose passes through from .env unchanged: an absolute host path there is not
# visible inside the container, and a relative one resolves against the image's WORKDIR.
PASSED_THROUGH_PATHS = ("PRETRAINED_CHECKPOINT", "QUARANTINE_DIR", "VOCAB_FILE")
CONTAINER_WORKDIR = "/workspace"  # docker/Dockerfile's WORKDIR
PATH_FIXES = {
    "PRETRAINED_CHECKPOINT": "put the file in PRETRAINED_DIR and name it data/pretrained/<file>",
    "VOCAB_FILE": "leave it empty for vocab.txt in DATASET_DIR, or put the file in a mounted folder and name "
    "it relative to the project folder (e.g. data/dataset/vocab.txt)",
    "QUARANTINE_DIR": "leave it empty (bad checkpoints are then renamed in place to <name>.corrupted) or use a "
    "folder under {output}/",
}


@dataclass(frozen=True)
class Override:
    """A value tagged `!override`: replaces what earlier files set instead of merging with it."""

    value: Any


class Reset:
    """A value tagged `!reset`: removes what earlier files set."""

    def __repr__(self) -> str:
        return "!reset"


class ComposeFileError(Exception):
    """A file that cannot be read or parsed; the message is one line."""


def _yaml_loader() -> type:
    import yaml  # test-time dependency, kept out of the preflight's import path

    class ComposeLoader(yaml.SafeLoader):
        pass

    def construct_override(loader: Any, node: Any) -> Override:
        if isinstance(node, yaml.MappingNode):
            return Override(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Override(loader.construct_sequence(node, deep=True))
        return Override(loader.construct_scalar(node))

    ComposeLoader.add_constructor("!override", construct_override)
    ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
    return ComposeLoader


def load_compose_file(path: Path) -> dict[str, Any]:
    """The file as plain data, with `!override` / `!reset` kept as Override / Reset values."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ComposeFileError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        # A SafeLoader subclass: no Python objects are built from the file.
        document = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ComposeFileError(f"{path}:{where} is not valid YAML: {problem}") from None
    if not isinstance(document, dict):
        raise ComposeFileError(f"{path}: expected a mapping at the top level")
    return document


# --- interpolation ---------------------------------------------------------------------------------------


class InterpolationError(Exception):
    pass


def interpolate(value: Any, env: Mapping[str, str], strict: bool = True) -> Any:
    """Compose variable substitution (`$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`,
    `${VAR:+r}`, `${VAR+r}`, `$$`) applied to every string in a document. Not strict: a required variable
    that is missing becomes `<NAME>` (checking a file's defaults, not a user's configuration)."""
    if isinstance(value, str):
        return _interpolate_text(value, env, strict)
    if isinstance(value, Override):
        return Override(interpolate(value.value, env, strict))
    if isinstance(value, dict):
        return {key: interpolate(item, env, strict) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, strict) for item in value]
    return value


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _interpolate_text(text: str, env: Mapping[str, str], strict: bool = True) -> str:
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$":
            out.append(char)
            index += 1
            continue
        following = text[index + 1 : index + 2]
        if following == "$":
            out.append("$")
            index += 2
        elif following == "{":
            end = _closing_brace(text, index + 2)
            out.append(_substitute(text[index + 2 : end], env, strict))
            index = end + 1
        else:
            match = _NAME.match(text, index + 1)
            if match is None:
                out.append("$")
                index += 1
            else:
                out.append(env.get(match.group(), ""))
                index = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    raise InterpolationError(f"unclosed '${{' in {text!r}")


def _substitute(expression: str, env: Mapping[str, str], strict: bool) -> str:
    match = _NAME.match(expression)
    if match is None:
        raise InterpolationError(f"invalid variable name in '${{{expression}}}'")
    name, rest = match.group(), expression[match.end() :]
    value = env.get(name)
    if rest == "":
        return value or ""
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            operand = rest[len(operator) :]
            break
    else:
        raise InterpolationError(f"unsupported substitution '${{{expression}}}'")
    present = bool(value) if operator.startswith(":") else value is not None
    if operator.endswith("-"):
        return value if present and value is not None else _interpolate_text(operand, env, strict)
    if operator.endswith("+"):
        return _interpolate_text(operand, env, strict) if present else ""
    if not present and not strict:
        return f"<{name}>"
    if not present:
        raise InterpolationError(
            f"{name} is required: {_interpolate_text(operand, env, strict) or 'not set'}"
        )
    return value or ""


# --- merging ---------------------------------------------------------------------------------------------

# Sequences that Compose merges by a key instead of appending, and values an override replaces outright.
_REPLACED = {"command", "entrypoint", "test"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """`override` merged onto `base` with Compose's rules for the parts these checks read."""
    if isinstance(override, Reset):
        return None
    if isinstance(override, Override):
        return copy.deepcopy(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value, name)
            else:
                merged[name] = resolve_tags(value)
        return merged
    if key == "environment":
        return {**environment_of({"environment": base}), **environment_of({"environment": override})}
    if key == "volumes" and isinstance(base, list) and isinstance(override, list):
        by_target = {volume_mount(item).target: item for item in base}
        for item in override:
            by_target[volume_mount(item).target] = item
        return list(by_target.values())
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED:
        return base + [item for item in override if item not in base]
    return copy.deepcopy(override)


def resolve_tags(value: Any) -> Any:
    """The document as Compose sees it after merging: `!override` unwrapped, `!reset` keys removed."""
    if isinstance(value, Override):
        return resolve_tags(value.value)
    if isinstance(value, dict):
        return {key: resolve_tags(item) for key, item in value.items() if not isinstance(item, Reset)}
    if isinstance(value, list):
        return [resolve_tags(item) for item in value if not isinstance(item, Reset)]
    return value


# --- reading a service -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def volume_mount(item: Any) -> Mount:
    """A short (`src:dst[:ro]`) or long (`type/source/target/read_only`) volume entry."""
    if isinstance(item, dict):
        return Mount(str(item.get("source", "")), str(item.get("target", "")), bool(item.get("read_only")))
    parts = str(item).split(":")
    if len(parts) == 1:
        return Mount("", parts[0], False)
    options = parts[2].split(",") if len(parts) > 2 else []
    return Mount(parts[0], parts[1], "ro" in options)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, dict):
        return {str(key): "" if value is None else str(value) for key, value in raw.items()}
    pairs = (str(item).split("=", 1) for item in raw)
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_DURATION_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: Any) -> float | None:
    """Compose's durations (Go syntax: `180s`, `3m`, `1m30s`), or None when not one."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    if not text or _DURATION_PART.sub("", text) != "":
        return None
    return sum(float(number) * _DURATION_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", re.IGNORECASE)


def parse_size(text: Any) -> int | None:
    """Compose's byte sizes (`8gb`, `512m`, `2147483648`), or None when not one."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.fullmatch(str(text).strip())
    if match is None:
        return None
    power = "bkmg".index(match.group(2).lower() or "b")
    return int(float(match.group(1)) * 1024**power)


def gpu_requests(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The service's device requests for GPUs (deploy reservations, or the newer `gpus:`)."""
    deploy = service.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    requests = [
        device
        for device in devices
        if isinstance(device, dict)
        and ("gpu" in (device.get("capabilities") or []) or device.get("driver") == "nvidia")
    ]
    gpus = service.get("gpus")
    if gpus == "all":
        requests.append({"count": "all"})
    elif isinstance(gpus, list):
        requests.extend(item for item in gpus if isinstance(item, dict))
    return requests


# --- the checks ------------------------------------------------------------------------------------------


def check_gpu_requests(name: str, service: Mapping[str, Any]) -> list[str]:
    problems = []
    for request in gpu_requests(service):
        has_count = request.get("count") not in (None, "")
        has_ids = bool(request.get("device_ids"))
        where = f"services.{name} GPU reservation"
        if has_count and has_ids:
            problems.append(
                f"{where} sets both count and device_ids (Compose rejects that) -- keep one: GPU_COUNT in "
                "compose.yaml, or GPU_DEVICE_IDS with compose.gpu-ids.yaml"
            )
        elif not has_count and not has_ids:
            problems.append(f"{where} has neither count nor device_ids -- set count: ${{GPU_COUNT:-all}}")
        elif has_count and not re.fullmatch(r"all|-1|[1-9][0-9]*", str(request["count"]).strip()):
            problems.append(
                f"{where} count is {request['count']!r} -- use 'all' or a whole number >= 1 (GPU_COUNT)"
            )
        elif has_ids and not all(str(item).strip() for item in request["device_ids"]):
            problems.append(f"{where} has an empty device id -- set GPU_DEVICE_IDS, e.g. 0 or 0,1")
    return problems


def check_train_service(service: Mapping[str, Any]) -> list[str]:
    """Every rule the training service must keep; one line per broken rule."""
    where = f"services.{TRAIN_SERVICE}"
    problems: list[str] = []
    environment = environment_of(service)
    mounts = [volume_mount(item) for item in service.get("volumes") or []]

    for variable in WRITTEN_DIRS + READ_DIRS:
        writes = variable in WRITTEN_DIRS
        inside = environment.get(variable, "")
        if not inside:
            problems.append(
                f"{where}.environment does not pin {variable} -- .env holds a host path; set "
                f"{variable} to the container side of its mount"
            )
            continue
        if not PurePosixPath(inside).is_absolute():
            problems.append(f"{where}.environment {variable}={inside} is relative -- use the mount's target")
            continue
        mount = _mount_holding(mounts, inside)
        if mount is None:
            problems.append(
                f"{where}.volumes mounts nothing at {inside} ({variable}) -- what is written there is lost "
                "with the container; mount the host folder there"
                if writes
                else f"{where}.volumes mounts nothing at {inside} ({variable}) -- mount the host folder there"
            )
        elif writes and mount.read_only:
            problems.append(
                f"{where}.volumes mounts {mount.target} read-only but the trainer writes {variable} there "
                "-- remove read_only"
            )

    grace = service.get("stop_grace_period")
    grace_s = 10.0 if grace is None else parse_duration(grace)
    if grace_s is None:
        problems.append(f"{where}.stop_grace_period {grace!r} is not a duration -- write it like 180s")
    elif grace_s <= SIGTERM_SAVE_BOUND_S:
        shown = "not set (Docker's default is 10s)" if grace is None else f"{grace}"
        problems.append(
            f"{where}.stop_grace_period is {shown}, not longer than the trainer's {SIGTERM_SAVE_BOUND_S} s "
            f"save-on-SIGTERM bound -- set it to {SIGTERM_SAVE_BOUND_S + 60}s or more"
        )

    if service.get("init") is not True:
        problems.append(
            f"{where}.init is not true -- set init: true so SIGTERM reaches the trainer and workers are reaped"
        )

    if service.get("ipc") != "host":
        shm = service.get("shm_size")
        shm_bytes = None if shm in (None, "") else parse_size(shm)
        if shm in (None, ""):
            problems.append(
                f"{where}.shm_size is not set (Docker gives 64 MB: DataLoader workers die with 'Bus error') "
                "-- set shm_size: ${SHM_SIZE:-8gb}"
            )
        elif shm_bytes is None:
            problems.append(f"{where}.shm_size {shm!r} is not a size -- write it like 8gb or 512m")
        elif shm_bytes <= DOCKER_DEFAULT_SHM_BYTES:
            problems.append(f"{where}.shm_size {shm} is not above Docker's 64 MB default -- raise SHM_SIZE")

    restart = str(service.get("restart", "no")).strip()
    if restart in ("always", "unless-stopped") or restart == "on-failure":
        problems.append(
            f"{where}.restart {restart} retries without end, also on a configuration error (exit 2) "
            "-- use on-failure:3"
        )

    require_gpu = environment.get("REQUIRE_GPU", "false").strip().lower() in TRUE_WORDS
    if require_gpu and not gpu_requests(service):
        problems.append(
            f"{where} requires a GPU (REQUIRE_GPU=true) but reserves none -- add the GPU reservation, or "
            "set REQUIRE_GPU: 'false' (compose.cpu.yaml)"
        )
    return problems


def _mount_holding(mounts: Sequence[Mount], inside: str) -> Mount | None:
    path = PurePosixPath(inside)
    holding = [
        m
        for m in mounts
        if m.target and (path == PurePosixPath(m.target) or PurePosixPath(m.target) in path.parents)
    ]
    return max(holding, key=lambda m: len(PurePosixPath(m.target).parts), default=None)


def check_env_file_paths(env: Mapping[str, str], train: Mapping[str, Any] | None = None) -> list[str]:
    """Path settings Compose passes through from .env unchanged (those the train service's `environment:`
    does not pin) must name a mounted place inside the container too: relative ones resolve against the
    image's working directory, where nothing is mounted. QUARANTINE_DIR must be inside the read-write output
    mount (quarantining renames within one file system), the others inside any mount."""
    train = train or {}
    pinned = environment_of(train)
    mounts = [volume_mount(item) for item in train.get("volumes") or []]
    output_dir = pinned.get("OUTPUT_DIR", "")
    output_mount = _mount_holding(mounts, output_dir) if output_dir.startswith("/") else None
    # How .env names the output mount: relative to the project folder, as the container resolves it.
    output_folder = (
        posixpath.relpath(output_mount.target, CONTAINER_WORKDIR)
        if output_mount is not None and output_mount.target.startswith(CONTAINER_WORKDIR + "/")
        else "the output folder"
    )
    problems = []
    for variable in PASSED_THROUGH_PATHS:
        value = (env.get(variable) or "").strip()
        if not value or variable in pinned:
            continue
        inside = PurePosixPath(posixpath.normpath(posixpath.join(CONTAINER_WORKDIR, value)))
        if value.startswith("~") or (value.startswith("/") and not value.startswith(CONTAINER_WORKDIR + "/")):
            why = "is an absolute host path, which the container does not see"
        elif variable == "QUARANTINE_DIR":
            if output_mount is not None and _mount_holding([output_mount], str(inside)) is not None:
                continue
            where = f"({output_mount.target})" if output_mount else "(none found)"
            why = (
                f"is {inside} in the container, outside the read-write output mount {where}: quarantined "
                "checkpoints would stay in the container's writable layer"
            )
        elif _mount_holding(mounts, str(inside)) is None:
            why = f"is {inside} in the container, where nothing is mounted"
        else:
            continue
        problems.append(f"{variable}={value} {why} -- {PATH_FIXES[variable].format(output=output_folder)}")
    return problems


def check_configuration(label: str, document: Mapping[str, Any]) -> list[str]:
    services = document.get("services") or {}
    if not isinstance(services, dict) or TRAIN_SERVICE not in services:
        return [f"{label}: no service named {TRAIN_SERVICE!r} -- `docker compose up train` needs one"]
    problems = []
    for name, service in services.items():
        problems += check_gpu_requests(name, service or {})
    problems += check_train_service(services[TRAIN_SERVICE] or {})
    return [f"{label}: {problem}" for problem in problems]


# --- the schema ------------------------------------------------------------------------------------------


def load_compose_schema() -> dict[str, Any] | None:
    """The Compose specification's JSON schema as vendored by check-jsonschema, or None if not installed."""
    try:
        from importlib.resources import files

        resource = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
        return json.loads(resource.read_text(encoding="utf-8"))
    except (ImportError, ModuleNotFoundError, FileNotFoundError, OSError):
        return None


def schema_problems(label: str, document: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.append(f"{label}: schema: {where}: {error.message}")
    return problems


# --- entry point -----------------------------------------------------------------------------------------


def check_files(
    paths: Sequence[Path], env: Mapping[str, str], use_schema: bool = True, strict: bool = False
) -> list[str]:
    """All problems of the base file alone and of the base merged with each override, one line each.
    `strict`: a required variable (`${VAR:?...}`) missing from `env` is a problem."""
    try:
        documents = [load_compose_file(path) for path in paths]
    except ComposeFileError as error:
        return [str(error)]
    problems: list[str] = []
    schema = load_compose_schema() if use_schema else None
    if schema is not None:
        for path, document in zip(paths, documents, strict=True):
            problems += schema_problems(str(path), resolve_tags(document), schema)

    base_label = str(paths[0])
    configurations = [(base_label, resolve_tags(documents[0]))]
    for path, document in zip(paths[1:], documents[1:], strict=True):
        configurations.append((f"{base_label} + {path}", merge(resolve_tags(documents[0]), document)))
    path_problems: list[str] = []
    for label, document in configurations:
        try:
            resolved = interpolate(document, env, strict)
        except InterpolationError as error:
            problems.append(f"{label}: {error}")
            continue
        problems += check_configuration(label, resolved)
        train = (resolved.get("services") or {}).get(TRAIN_SERVICE)
        # The .env is one file: a path it gets wrong is named once, not once per configuration.
        path_problems += [line for line in check_env_file_paths(env, train) if line not in path_problems]
    return problems + path_problems


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    if not path.is_file():
        raise ComposeFileError(f"{path}: no such env file")
    return {key: value or "" for key, value in dotenv_values(path).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compose_check", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="the base Compose file, then overrides")
    parser.add_argument("--env-file", type=Path, help="interpolate variables from this file (default: none)")
    parser.add_argument("--no-schema", action="store_true", help="skip the JSON schema validation")
    args = parser.parse_args(argv)
    try:
        env = _read_env_file(args.env_file) if args.env_file else {}
    except ComposeFileError as error:
        print(error)
        return 1
    if not args.no_schema and load_compose_schema() is None:
        print("note: check-jsonschema is not installed; the schema validation is skipped", file=sys.stderr)
    problems = check_files(args.files, env, use_schema=not args.no_schema, strict=args.env_file is not None)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"compose check: OK ({', '.join(str(path) for path in args.files)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
