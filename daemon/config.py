"""One pydantic model for all settings, loaded once from config.yaml.

Environment variables override keys: IMGTRAIN_<SECTION>__<KEY>=value (for
example IMGTRAIN_CLIP__BATCH_SIZE=16, IMGTRAIN_INBOX_DIR=/srv/inbox), parsed by
pydantic-settings: "true", "16" and "0.5" get their field's type, a list is
JSON (IMGTRAIN_PHASES='["embedding"]'), and "null" is None.
Relative directories are resolved against the directory holding the config
file, so a service and a shell see the same paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from daemon.errors import ConfigError
from daemon.redact import redact, redact_url

ENV_PREFIX = "IMGTRAIN_"
CONFIG_ENV = "IMGTRAIN_CONFIG"
# Variables with the prefix that are not config keys: the config file, and the tests' data.
NOT_KEYS = frozenset({CONFIG_ENV, "IMGTRAIN_SHARED"})
PHASE_NAMES = ("embedding", "faces", "clustering")
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InboxConfig(_Section):
    settle_seconds: float = Field(5.0, ge=0)
    scan_interval_seconds: float = Field(1.0, gt=0, le=60)
    rescan_seconds: float = Field(60.0, gt=0)
    polling: bool = False
    ignore: list[str] = Field(default_factory=list)
    # What a half-trusted dropper may make the daemon read (README, "Security").
    link_roots: list[Path] = Field(default_factory=list)
    max_files_per_batch: int = Field(200_000, ge=1)
    max_depth: int = Field(32, ge=1)
    max_batch_bytes: int = Field(2 * 10**12, ge=1)

    # Applied by a reload (SIGHUP); the other inbox keys need a restart.
    RELOADABLE: ClassVar[tuple[str, ...]] = (
        "link_roots",
        "max_files_per_batch",
        "max_depth",
        "max_batch_bytes",
    )


class StatusConfig(_Section):
    heartbeat_seconds: float = Field(10.0, gt=0)
    busy_interval_seconds: float = Field(1.0, gt=0, le=10)
    max_errors: int = Field(50, ge=1, le=1000)
    stale_after_seconds: float = Field(30.0, gt=0)
    # null: the larger of 60 s and ten times the expected time of the current step.
    stall_seconds: float | None = Field(None, gt=0)
    metrics: bool = True  # status/imgtrain.prom, for node_exporter's textfile collector


class QueueConfig(_Section):
    max_retries: int = Field(3, ge=0)
    control_poll_seconds: float = Field(0.5, gt=0)


class DecodeConfig(_Section):
    workers: int = Field(2, ge=1, le=32)
    max_side: int = Field(1600, ge=224)
    min_side: int = Field(8, ge=1)
    max_image_pixels: int = Field(178_956_970, ge=1)
    # Where JPEGs are decoded: Pillow on the CPU, or nvJPEG on the GPU that `device` names.
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class ClipConfig(_Section):
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    model_config_path: str | None = Field(None, alias="model_config")
    batch_size: int = Field(32, ge=1, le=1024)
    cuda_batch_size: int = Field(128, ge=1, le=4096)
    threads: int = Field(0, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    cache_dir: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FacesConfig(_Section):
    model_pack: str = "buffalo_l"
    model_root: str = "~/.insightface"
    model_dir: str | None = None
    detector: str | None = None
    download: bool = True
    det_size: int = Field(640, ge=64, le=2048)
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_face_size: int = Field(20, ge=1)
    threads: int = Field(0, ge=0)


class ClusteringConfig(_Section):
    min_cluster_size: int = Field(3, ge=2)
    min_samples: int | None = Field(None, ge=1)
    assign_threshold: float = Field(0.5, ge=-1, le=1)
    suggest_threshold: float = Field(0.4, ge=-1, le=1)
    attach_threshold: float = Field(0.5, ge=-1, le=1)
    min_faces: int = Field(3, ge=1)
    pool_max: int = Field(20_000, ge=10)
    pca_dims: int = Field(0, ge=0)
    # A face this close (cosine) to one taken from a person is a copy of it: kept away too.
    rejection_threshold: float = Field(0.9, ge=0, le=1)

    @model_validator(mode="after")
    def _thresholds(self) -> ClusteringConfig:
        if self.suggest_threshold > self.assign_threshold:
            raise ValueError(
                f"suggest_threshold ({self.suggest_threshold}) must not exceed "
                f"assign_threshold ({self.assign_threshold})"
            )
        return self


class StoreConfig(_Section):
    url: str | None = None
    path: str | None = None
    # Sent to the Chroma server with every request; never shown (SecretStr).
    token: SecretStr | None = None
    token_header: Literal["Authorization", "X-Chroma-Token"] = "Authorization"
    hnsw_ef_search: int = Field(100, ge=10)
    hnsw_ef_construction: int = Field(200, ge=10)
    hnsw_max_neighbors: int = Field(32, ge=4)


class DuplicatesConfig(_Section):
    # CLIP cosine at which two photos count as copies of one (`imgtrain duplicates`).
    threshold: float = Field(0.98, ge=0, le=1)


class ModelsConfig(_Section):
    retry_seconds: float = Field(60.0, gt=0)
    dir: str = "models"


class WorkersConfig(_Section):
    """Where the image phases run: in the daemon (`local`) or on `imgtrain worker`s via RQ."""

    backend: Literal["local", "rq"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = Field("imgtrain", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    job_timeout: int = Field(600, ge=10, le=86_400)
    chunk_size: int = Field(64, ge=1, le=1024)
    path_map: dict[str, str] = Field(default_factory=dict)
    send_bytes: bool = False
    heartbeat_seconds: float = Field(5.0, ge=0.5, le=60)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            # The value may hold a password: the message shows it redacted.
            raise ValueError(
                f"must start with redis://, rediss:// (TLS) or unix:// (got {redact_url(url)!r})"
            )
        return url

    @field_validator("path_map")
    @classmethod
    def _prefixes(cls, mapping: dict[str, str]) -> dict[str, str]:
        for prefix, there in mapping.items():
            if not prefix.startswith("/") or not there.startswith("/"):
                raise ValueError(f"both sides must be absolute paths (got {prefix!r}: {there!r})")
        return {k.rstrip("/") or "/": v.rstrip("/") or "/" for k, v in mapping.items()}


class Config(_Section):
    inbox_dir: Path = Path("inbox")
    data_dir: Path = Path("data")
    status_dir: Path = Path("status")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto, cpu, cuda or cuda:N: where CLIP and the face models run (daemon and workers alike).
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    phases: list[Literal["embedding", "faces", "clustering"]] = Field(
        default_factory=lambda: list(PHASE_NAMES)
    )
    inbox: InboxConfig = Field(default_factory=InboxConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)

    @model_validator(mode="after")
    def _phase_order(self) -> Config:
        if len(set(self.phases)) != len(self.phases):
            raise ValueError(f"phases lists a phase twice: {self.phases}")
        if "clustering" in self.phases and "faces" not in self.phases:
            raise ValueError("phases: clustering needs faces")
        if self.workers.backend == "rq" and not self.store.url:
            # The embedded PersistentClient is one process's store: Chroma documents it
            # as unsafe across processes, and workers on other machines cannot reach it.
            raise ValueError(
                "workers.backend: rq needs store.url: workers upsert into a Chroma server"
                " (`chroma run`); the embedded store is not shared between processes"
            )
        return self

    # Derived locations: one place decides where things live.
    @property
    def batches_dir(self) -> Path:
        return self.data_dir / "batches"

    @property
    def rejected_dir(self) -> Path:
        """Claimed links that turned out to lead outside inbox.link_roots (after a crash)."""
        return self.data_dir / "rejected"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def chroma_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "chroma"

    @property
    def status_path(self) -> Path:
        return self.status_dir / "training_status.json"

    @property
    def schema_path(self) -> Path:
        return self.status_dir / "training_status.schema.json"

    @property
    def metrics_path(self) -> Path:
        return self.status_dir / "imgtrain.prom"


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment parsing (prefix, `__` nesting, JSON for lists), over a
    given mapping rather than always os.environ, so a config can be built for any environment."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(
            Config,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            env_parse_none_str="null",
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _unknown_env_keys(environ: Mapping[str, str]) -> list[str]:
    """IMGTRAIN_* variables that name no key: a typo must not be silently ignored."""
    unknown = []
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in NOT_KEYS:
            continue
        model: type[BaseModel] | None = Config
        for part in name[len(ENV_PREFIX) :].lower().split("__"):
            fields = {} if model is None else model.model_fields
            field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
            if field is None:
                unknown.append(name)
                break
            ann = field.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return unknown


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe(err: ValidationError, source: str) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        elif not item["loc"] or key.endswith("token"):
            # A check across keys would echo the whole config, and a token is a secret:
            # the message names the keys and leaves the values out. (URLs are shown with
            # their passwords blanked, below.)
            parts.append(f"{key}: {item['msg']}")
        else:
            parts.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return redact(f"{source}: " + "; ".join(parts))


def resolve_config_path(
    cli_path: str | Path | None, environ: Mapping[str, str] | None = None
) -> Path:
    environ = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return Path("config.yaml")


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the one Config for this process. Raises ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    cfg_path = resolve_config_path(path, environ)
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path}: the top level must be a mapping of keys")
        data = loaded or {}
    elif path is not None or environ.get(CONFIG_ENV):
        raise ConfigError(f"config file {cfg_path} does not exist", hint="Pass an existing file.")
    unknown = _unknown_env_keys(environ)
    if unknown:
        raise ConfigError(f"environment: {', '.join(sorted(unknown))}: unknown key")
    data = _merge(data, _Environment(environ)())
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(cfg_path))) from exc
    base = cfg_path.resolve().parent

    def absolute(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    def opt(value: str | None) -> str | None:
        return None if value is None else str(absolute(Path(value)))

    pretrained = cfg.clip.pretrained
    if "/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        pretrained = str(absolute(Path(pretrained)))
    clip = cfg.clip.model_copy(
        update={
            "model_config_path": opt(cfg.clip.model_config_path),
            "cache_dir": opt(cfg.clip.cache_dir),
            "pretrained": pretrained,
        }
    )
    faces = cfg.faces.model_copy(
        update={"model_dir": opt(cfg.faces.model_dir), "model_root": opt(cfg.faces.model_root)}
    )
    store = cfg.store.model_copy(update={"path": opt(cfg.store.path)})
    inbox = cfg.inbox.model_copy(update={"link_roots": [absolute(p) for p in cfg.inbox.link_roots]})
    models = cfg.models.model_copy(update={"dir": opt(cfg.models.dir)})
    updates: dict[str, Any] = {
        "inbox": inbox,
        "inbox_dir": absolute(cfg.inbox_dir),
        "data_dir": absolute(cfg.data_dir),
        "status_dir": absolute(cfg.status_dir),
        "clip": clip,
        "faces": faces,
        "store": store,
        "models": models,
    }
    return cfg.model_copy(update=updates)
