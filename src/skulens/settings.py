"""Typed configuration: ``configs/base.yaml`` + ``configs/<profile>.yaml`` + environment.

Resolution order (later wins):

1. ``configs/base.yaml``;
2. ``configs/<profile>.yaml`` where the profile is ``SKULENS_PROFILE`` (default ``local``);
3. ``SKULENS_HOME`` for ``home``, and ``SKULENS__SECTION__KEY=value`` for any key (values are
   parsed as YAML scalars, so ``SKULENS__SPARK__CONF__spark.ui.enabled=true`` works).

String values may reference ``${ENV_VAR}`` or ``${ENV_VAR:-default}`` (resolved when loading; an
unset variable without a default is an error that names it) and ``{home}`` (the resolved data
root). Relative paths are taken from the project root, the folder that holds ``configs/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILES = ("local", "production")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_PREFIX = "SKULENS__"


class ConfigError(ValueError):
    """Configuration could not be loaded or failed validation; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetsSettings(_Model):
    """Where the bundled datasets are and how strict a build is."""

    shared_root: Path
    fashion_dir: str = "fashion"
    homedepot_judgments: str = "homedepot/judgments.csv"
    max_reject_fraction: float = Field(0.05, ge=0.0, le=1.0)
    keep_versions: int = Field(3, ge=1)

    @property
    def fashion_root(self) -> Path:
        return self.shared_root / self.fashion_dir

    @property
    def homedepot_path(self) -> Path:
        return self.shared_root / self.homedepot_judgments


class S3Settings(_Model):
    """An S3-compatible object store (AWS S3, MinIO)."""

    bucket: str = Field(min_length=3)
    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = "skulens"

    @field_validator("endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint_url must be an http(s) URL, got {value!r}")
        return value


class StorageSettings(_Model):
    """Artefact storage: local files by default, an object store in production."""

    backend: Literal["local", "s3"] = "local"
    local_root: Path
    s3: S3Settings | None = None

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageSettings:
        if self.backend == "s3" and self.s3 is None:
            raise ValueError("storage.backend is 's3' but storage.s3 (bucket, endpoint_url) is missing")
        return self


class DatabaseSettings(_Model):
    """The metadata database (SQLAlchemy URL)."""

    url: str

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql(\+\w+)?)://", value):
            raise ValueError(f"database url must be sqlite:// or postgresql://, got {_mask(value)!r}")
        return value


class SparkSettings(_Model):
    """Where Spark jobs run: ``local[N]`` here, a cluster master URL in production."""

    master: str = "local[2]"
    app_name: str = "skulens"
    driver_memory: str = "2g"
    conf: dict[str, str] = Field(default_factory=dict)
    # Reliable checkpoints of iterative jobs (default SKULENS_HOME/spark/checkpoints; shared storage
    # on a cluster). Paths and URLs (s3a://...) both work.
    checkpoint_dir: str | None = None
    # How many tar shards build_pairs writes per split (WebDataset).
    shards_per_split: int = Field(4, ge=1)

    @field_validator("master")
    @classmethod
    def _master_url(cls, value: str) -> str:
        if not re.match(r"^(local(\[(\d+|\*)(,\d+)?\])?|spark://\S+|k8s://\S+|yarn|sc://\S+)$", value):
            raise ValueError(
                f"spark.master must be local[N], spark://host:port, k8s://..., yarn or sc://..., got {value!r}"
            )
        return value

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # Spark configuration values are strings; YAML gives ints and booleans.
        if isinstance(value, Mapping):
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value


class KafkaSettings(_Model):
    bootstrap_servers: str = Field(min_length=3)
    events_topic: str = "skulens.events"


class OnlineStoreSettings(_Model):
    """Where the stream job upserts online features and the service reads them."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: Path | None = None  # default SKULENS_HOME/stream/online.db
    redis_url: str | None = None
    key_prefix: str = "skulens"

    @model_validator(mode="after")
    def _redis_needs_url(self) -> OnlineStoreSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("stream.online_store.backend is 'redis' but redis_url is missing")
        return self


class StreamSettings(_Model):
    """The event stream: the service's landing zone (files locally, Kafka in production), the stream
    job that reads it, and the online features it writes."""

    backend: Literal["files", "kafka"] = "files"
    files_dir: Path | None = None
    kafka: KafkaSettings | None = None
    # The service side: records queued per worker (past it they are dropped and counted), and how
    # often a landing file is closed and published.
    queue_size: int = Field(20_000, ge=1)
    rotate_s: float = Field(1.0, gt=0)
    rotate_bytes: int = Field(8 << 20, ge=1024)
    # The stream job: seconds between micro-batches of `skulens stream run`, files per batch, how
    # long (event time) a click waits for its search record before it is written orphaned, and the
    # oldest event accepted.
    trigger_s: float = Field(2.0, gt=0)
    max_files_per_trigger: int = Field(1000, ge=1)
    click_watermark_s: float = Field(600.0, ge=0)
    max_event_age_days: int = Field(7, ge=1)
    online_store: OnlineStoreSettings = Field(default_factory=OnlineStoreSettings)
    # The service's cache of online features: refreshed this often; older than stale_s is flagged.
    features_refresh_s: float = Field(2.0, gt=0)
    features_stale_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _backend_settings(self) -> StreamSettings:
        if self.backend == "kafka" and self.kafka is None:
            raise ValueError("stream.backend is 'kafka' but stream.kafka.bootstrap_servers is missing")
        if self.backend == "files" and self.files_dir is None:
            raise ValueError("stream.backend is 'files' but stream.files_dir is missing")
        return self


class MLflowSettings(_Model):
    tracking_uri: str
    artifact_location: str
    experiment: str = "skulens"


class GateRule(_Model):
    """A promotion rule on one logged metric (higher is better): at least ``min``, at most
    ``max_drop`` below the current champion, and more than ``min_margin`` above each named baseline
    that the same run measured on the same held-out data (``beats``: logged metric names)."""

    metric: str
    min: float = 0.0
    max_drop: float = Field(0.0, ge=0)
    beats: list[str] = Field(default_factory=list)
    min_margin: float = Field(0.0, ge=0)


class ParitySettings(_Model):
    min_cosine: float = Field(0.99, gt=0, le=1)  # encoders: INT8 vs fp32 embeddings
    max_recall_drop: float = Field(0.005, ge=0)  # encoders: a recall@10 drop up to this always passes
    # A larger drop fails when it is significant (one-sided exact McNemar test at this level) or above
    # the hard limit; see skulens.export.parity._retrieval_holds.
    recall_drop_alpha: float = Field(0.05, gt=0, lt=1)
    max_recall_drop_hard: float = Field(0.02, ge=0)
    min_rank_corr: float = Field(0.9, gt=0, le=1)  # reranker: Kendall tau of INT8 vs fp32 orders, per query


class ModelsSettings(_Model):
    embedder: str = "skulens-embedder"
    reranker: str = "skulens-reranker"
    ranker: str = "skulens-ranker"
    text_encoder: str = "skulens-text-encoder"
    gate: dict[Literal["embedder", "reranker", "ranker", "text_encoder"], list[GateRule]] = \
        Field(default_factory=dict)
    parity: ParitySettings = Field(default_factory=ParitySettings)
    # ONNX Runtime provider (skulens.models.onnx): auto = CUDA where available, else CPU.
    onnx_device: Literal["auto", "cpu", "cuda"] = "auto"


class VectorIndexSettings(_Model):
    kind: Literal["hnsw", "hnsw_sq8", "hnsw_pq", "flat", "auto"] = "hnsw"
    m: int = Field(32, ge=4)
    ef_construction: int = Field(80, ge=8)
    ef_search: int = Field(64, ge=1)
    min_shard_size: int = Field(500, ge=1)
    route_top_n: int = Field(3, ge=1)
    route_margin: float = Field(0.1, ge=0)
    min_recall: float = Field(0.95, ge=0, le=1)
    gate_queries: int = Field(500, ge=10)
    exact_filter_below: int = Field(2000, ge=0)
    memory_budget_mb: float | None = Field(None, gt=0)
    latency_budget_ms: float | None = Field(None, gt=0)
    tune_ef: bool = True
    pq_bytes: int | None = Field(None, ge=1)


class MilvusSettings(_Model):
    # A Milvus server (http://host:19530) or a local file served by milvus-lite.
    uri: str = "milvus.db"
    token: str | None = None


class RetrievalSettings(_Model):
    catalog: str = "fashion"
    shard_level: int = Field(0, ge=0)
    # Vector store build_index writes: faiss (embedded files) or milvus (collections + alias).
    store: Literal["faiss", "milvus"] = "faiss"
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    vector: VectorIndexSettings = Field(default_factory=VectorIndexSettings)
    lexical_boosts: dict[str, float] = Field(default_factory=lambda: {"title": 2.0, "attributes": 1.0,
                                                                      "category": 0.5})
    # Canonical tokens added to titles and queries alike (units, sizes, dimensions, model numbers:
    # skulens.retrieval.normalise.NORMALISERS); recorded in each lexical index's manifest.
    lexical_normaliser: Literal["none", "measures"] = "measures"
    keep_versions: int = Field(3, ge=1)
    # Which runner embeds the catalogue in build_index: local (this process) or spark (mapInPandas on
    # spark.master; the same mapper, the same vectors).
    embed_runner: Literal["local", "spark"] = "local"
    # The local runner copies the published version's vectors of unchanged products (same model
    # version, fusion weight, image engine, title and photo file) instead of embedding them again.
    reuse_embeddings: bool = True
    # The dense side of a catalogue without photos: the fine-tuned text-encoder champion when one
    # passed its gate (champion; else the two-tower's text tower), or always the two-tower.
    text_encoder: Literal["champion", "two_tower"] = "champion"
    # POST target of notify_serving (the service's /admin/reload); the admin key is read from the
    # environment variable serving.admin_key_env names. A RELOAD marker is always written too.
    reload_url: str | None = None


class LLMTierSettings(_Model):
    # One tier of the cascade, made by name from skulens.serving.llm.tiers.LLM_TIERS.
    kind: str
    timeout_ms: float = Field(1000.0, gt=0)
    usd_per_mtok_in: float = Field(0.0, ge=0)
    usd_per_mtok_out: float = Field(0.0, ge=0)
    max_tokens: int = Field(200, ge=1)
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    gguf_path: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)


class LLMSettings(_Model):
    # Tiers in escalation order; the hosted ones are added by configuration (configs/production.yaml).
    tiers: list[LLMTierSettings] = Field(default_factory=lambda: [
        LLMTierSettings(kind="rules", timeout_ms=5.0), LLMTierSettings(kind="local", timeout_ms=2500.0)])
    per_request_usd: float = Field(0.01, ge=0)
    per_day_usd: float = Field(5.0, ge=0)
    cache_size: int = Field(10_000, ge=0)
    breaker_failures: int = Field(3, ge=1)
    breaker_reset_s: float = Field(30.0, gt=0)


class BusinessRuleSettings(_Model):
    # Products never shown; products pinned to the top for an exact (case-insensitive) query; at most
    # this many products of one leaf category on a page (0: no cap).
    hidden: list[str] = Field(default_factory=list)
    pinned: dict[str, list[str]] = Field(default_factory=dict)
    max_per_category: int = Field(0, ge=0)


class AdmissionSettings(_Model):
    max_active: int = Field(4, ge=1, le=1024)
    min_active: int = Field(1, ge=1, le=1024)
    adaptive: bool = True
    max_waiting: int = Field(32, ge=0, le=100_000)
    max_wait_ms: float = Field(250.0, ge=0)
    retry_after_s: int = Field(1, ge=0, le=3600)


class BatchingSettings(_Model):
    enabled: bool = True
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(0.0, ge=0, le=100)


class SharedStateSettings(_Model):
    """The store every serving worker and replica shares (routing, experiments, canary statistics,
    the LLM day's spend): a SQLite file on one machine, Redis across machines."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: Path | None = None  # default SKULENS_HOME/serving/control.db
    redis_url: str | None = None
    key_prefix: str = "skulens:control:"
    # Seconds between a worker's looks at the routing (a change reaches every worker within this).
    sync_s: float = Field(1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> SharedStateSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("serving.shared.backend is 'redis' but redis_url is missing")
        return self


class ArmSettings(_Model):
    """One arm of an experiment: the versions it serves (null: the published ones) and its share."""

    share: float = Field(ge=0.0, le=1.0)
    index_version: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    reranker_version: int | None = Field(None, ge=1)
    ranker_version: int | None = Field(None, ge=1)


class ExperimentSettings(_Model):
    """An A/B experiment: arms (one is ``control``), shares adding up to 1, the salt that buckets
    users for it alone, and the window it runs in (UTC, ISO 8601; null: open)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    arms: dict[str, ArmSettings]
    salt: str | None = Field(None, min_length=1, max_length=128)
    start: str | None = None
    stop: str | None = None

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSettings:
        if "control" not in self.arms or len(self.arms) < 2:
            raise ValueError(f"experiment {self.name!r} needs an arm 'control' and at least one other")
        bad = [a for a in self.arms if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", a)]
        if bad:
            raise ValueError(f"experiment {self.name!r}: arm names {bad} must be 1-64 letters, digits, '-', '_'")
        total = sum(arm.share for arm in self.arms.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"experiment {self.name!r}: shares add up to {total:g}, not 1")
        return self


class CanarySettings(_Model):
    """Rollout steps of ``deploy_canary`` and the gates each step must pass (canary vs control over
    the same window)."""

    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    hold_s: float = Field(600.0, gt=0)         # time at each step before the next
    load_timeout_s: float = Field(300.0, gt=0)  # every worker must serve the canary within this
    min_requests: int = Field(200, ge=1)       # canary requests a step needs before its gates decide
    max_error_rate: float = Field(0.01, ge=0, le=1)      # searches with a failed stage or a 5xx
    max_p95_ratio: float = Field(1.5, gt=0)              # canary p95 / control p95 ...
    p95_slack_ms: float = Field(20.0, ge=0)              # ... once the gap is also over this (histogram buckets)
    max_p95_ms: float = Field(250.0, gt=0)               # and never above this
    max_fallback_increase: float = Field(0.05, ge=0, le=1)  # canary - control share with a fallback
    max_zero_result_increase: float = Field(0.02, ge=0, le=1)
    max_ctr_drop: float = Field(0.1, ge=0, le=1)         # relative; and sure (z > 2.5 at a step's end, 4 between)
    min_clicks: int = Field(50, ge=1)


class ServingSettings(_Model):
    # The search request's total budget and each stage's timeout (ms); a late stage falls back.
    total_budget_ms: float = Field(150.0, gt=0)
    stage_timeout_ms: dict[str, float] = Field(default_factory=lambda: {
        "normalise": 15.0, "rewrite": 40.0, "encode": 40.0, "retrieve": 40.0, "rescore": 20.0,
        "rerank": 60.0})
    # Zero-result recovery (the LLM cascade past tier 0) has its own budget: an empty page is worse
    # than a slower one.
    recovery_budget_ms: float = Field(3000.0, ge=0)
    # Spelling correction of queries from the catalogue's vocabulary (skulens.serving.spelling):
    # "context" picks the neighbour that co-occurs with the query's other words, "frequency" the most
    # frequent neighbour, "off" none. The service and `skulens eval` build the same one.
    spelling: Literal["context", "frequency", "off"] = "context"
    # The deepest rerank learn_ranking may choose (its cost grows with it); the served depth is the
    # index version's learned policy (ranking.json).
    rerank_top_k: int = Field(20, ge=1, le=200)
    # Drop a result whose vector has this cosine with a better one (the same product twice); null keeps all.
    collapse_threshold: float | None = Field(0.995, gt=0, le=1)
    # Skip the reranker (flagged rerank_shed) while more searches than this are in flight; null: never
    # (the default: admission control keeps the load a worker can serve at full quality instead).
    shed_rerank_above: int | None = Field(None, ge=1)
    # Admission control per worker: searches run at once, searches that may wait for a slot and for
    # how long; past that a 503 with Retry-After (degrade on purpose, visibly, not by fallbacks).
    admission: AdmissionSettings = Field(default_factory=lambda: AdmissionSettings())
    # Model calls of concurrent searches batched together (query encodings, reranker pairs):
    # at most max_batch items a call; max_wait_ms holds a partial batch that long to fill it.
    batching: BatchingSettings = Field(default_factory=lambda: BatchingSettings())
    # Worker processes of `skulens serve` (BentoML workers); each maps the index files.
    workers: int = Field(1, ge=1, le=64)
    # Intra-op threads of each ONNX Runtime session in a serving worker (0: the CPU count / workers).
    onnx_threads: int = Field(0, ge=0, le=256)
    # BentoML's access log line per request (a few percent of a search's CPU under load).
    access_log: bool = True
    # Text query vectors kept (LRU) per worker: popular queries skip the encoder; 0 switches it off.
    vector_cache_size: int = Field(4096, ge=0, le=10_000_000)
    # Serve this registered reranker version instead of the champion (null: the champion, or none
    # when no version passed its gate). The response's versions.reranker names it and says whether it
    # is the champion; benchmarks use it to measure the rerank stage's cost.
    reranker_version: int | None = Field(None, ge=1)
    # The learned ranker (LambdaMART from clicks): its champion is served unless this is false;
    # ranker_version pins a registered version instead.
    ranker: bool = True
    ranker_version: int | None = Field(None, ge=1)
    # Share of first-page searches with result 1 swapped with a random result 2-10 (flagged): the
    # randomisation from which the ranker's training estimates position propensities. 0: none.
    exploration_share: float = Field(0.0, ge=0.0, le=0.5)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    rules: BusinessRuleSettings = Field(default_factory=BusinessRuleSettings)
    # The environment variable holding the admin API key; admin endpoints answer 401 without it.
    admin_key_env: str = "SKULENS_ADMIN_KEY"
    # Experiment traffic split: variant name -> share (the champion variant is "control").
    traffic: dict[str, float] = Field(default_factory=lambda: {"control": 1.0})
    # Experiments declared here run in their windows (one at a time; windows must not overlap);
    # the admin API adds more at run time. Routing lives in the shared store (`shared`).
    experiments: list[ExperimentSettings] = Field(default_factory=list)
    shared: SharedStateSettings = Field(default_factory=SharedStateSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    # Seconds between looks at the catalogue's published index (CURRENT): a newly published or
    # rolled-back version is loaded and swapped in by the service itself; 0 switches it off.
    watch_index_s: float = Field(5.0, ge=0)


class DriftCheckSettings(_Model):
    """One drift check: the Evidently method its columns are compared with and the threshold past
    which a column counts as drifted (a distance or PSI: drifted above; a p-value test: below)."""

    enabled: bool = True
    method: str = "wasserstein"
    threshold: float = Field(0.1, gt=0)


class DriftSettings(_Model):
    """``monitor_drift``: a reference window against the current one, per check."""

    reference_days: float = Field(7.0, gt=0)   # the window before the current one
    current_hours: float = Field(24.0, gt=0)   # the window under test
    min_rows: int = Field(200, ge=10)          # fewer searches in a window: no decision (said so)
    # A drift decision triggers train_and_export once; the next reference starts at that decision,
    # so the shifted traffic becomes the new normal instead of triggering every hour.
    checks: dict[str, DriftCheckSettings] = Field(default_factory=lambda: {
        "query_text": DriftCheckSettings(method="wasserstein", threshold=0.2),
        "query_embeddings": DriftCheckSettings(method="wasserstein", threshold=0.1),
        "catalog": DriftCheckSettings(method="jensenshannon", threshold=0.1),
        "outcomes": DriftCheckSettings(method="wasserstein", threshold=0.2)})


class MonitoringSettings(_Model):
    drift: DriftSettings = Field(default_factory=DriftSettings)


class AirflowSettings(_Model):
    """Airflow's home and metadata database (``skulens airflow up`` and ``skulens pipeline``), and
    the REST API that ``skulens pipeline trigger`` talks to."""

    home: Path
    parallelism: int = Field(4, ge=1)
    sql_alchemy_conn: str
    api_url: str = "http://127.0.0.1:8080"  # the api-server (UI and REST API)
    username: str = "admin"
    # The environment variable holding the API password; locally the simple auth manager's
    # generated password file in ``home`` is read when it is unset.
    password_env: str = "SKULENS_AIRFLOW_PASSWORD"


class DbtSparkSettings(_Model):
    method: Literal["thrift", "http", "session"] = "thrift"
    host: str
    port: int = 10000
    schema_: str = Field("skulens", alias="schema")


class DbtSettings(_Model):
    target: Literal["duckdb", "spark"] = "duckdb"
    duckdb_path: Path | None = None
    spark: DbtSparkSettings | None = None

    @model_validator(mode="after")
    def _target_settings(self) -> DbtSettings:
        if self.target == "spark" and self.spark is None:
            raise ValueError("dbt.target is 'spark' but dbt.spark (host, port) is missing")
        if self.target == "duckdb" and self.duckdb_path is None:
            raise ValueError("dbt.target is 'duckdb' but dbt.duckdb_path is missing")
        return self


class Settings(_Model):
    """The whole configuration of one skulens deployment."""

    profile: Literal["local", "production"]
    project_root: Path
    home: Path
    datasets: DatasetsSettings
    storage: StorageSettings
    database: DatabaseSettings
    spark: SparkSettings
    stream: StreamSettings
    mlflow: MLflowSettings
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    airflow: AirflowSettings
    dbt: DbtSettings

    @property
    def tables_dir(self) -> Path:
        """Canonical tables, one folder per catalogue."""
        return self.home / "tables"

    @property
    def events_dir(self) -> Path:
        return self.home / "events"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with passwords in URLs masked, for printing."""
        return _redact(self.model_dump(mode="json", by_alias=True))


def find_project_root(start: Path | None = None) -> Path:
    """The folder holding ``configs/base.yaml``: ``SKULENS_PROJECT_ROOT``, else searched upwards
    from the current directory, else from this package's location (a source checkout)."""
    explicit = os.environ.get("SKULENS_PROJECT_ROOT")
    if explicit:
        return Path(explicit).resolve()
    for origin in (start or Path.cwd(), Path(__file__).resolve()):
        for folder in (origin, *origin.parents):
            if (folder / "configs" / "base.yaml").is_file():
                return folder.resolve()
    raise ConfigError(
        "no configs/base.yaml found above the current directory or the skulens package; "
        "run from the project checkout or set SKULENS_PROJECT_ROOT"
    )


def load_settings(
    profile: str | None = None,
    *,
    project_root: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the configuration for ``profile`` (default: ``SKULENS_PROFILE`` or local).

    Raises :class:`ConfigError` with the file, key and reason on any problem.
    """
    env = dict(os.environ if env is None else env)
    profile = profile or env.get("SKULENS_PROFILE", "local")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    root = (project_root or find_project_root()).resolve()
    config_dir = Path(env.get("SKULENS_CONFIG_DIR", root / "configs"))

    merged: dict[str, Any] = {}
    for name in ("base", profile):
        path = config_dir / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"configuration file {path} is missing")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        merged = _deep_merge(merged, _interpolate_env(data, env, str(path)))

    if env.get("SKULENS_HOME"):
        merged["home"] = env["SKULENS_HOME"]
    for key, value in sorted(env.items()):
        if key.startswith(_ENV_PREFIX) and len(key) > len(_ENV_PREFIX):
            _set_path(merged, key[len(_ENV_PREFIX) :].lower().split("__"), yaml.safe_load(value))

    home = _resolve_path(root, str(merged.get("home", "var")))
    merged = _format_home(merged, str(home))
    merged.update(profile=profile, project_root=str(root), home=str(home))
    merged.setdefault("datasets", {})
    for section, key in (
        ("datasets", "shared_root"),
        ("storage", "local_root"),
        ("stream", "files_dir"),
        ("airflow", "home"),
        ("dbt", "duckdb_path"),
    ):
        value = (merged.get(section) or {}).get(key)
        if value is not None:
            merged[section][key] = str(_resolve_path(root, str(value)))
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration (profile {profile!r}): {problems}") from exc


def _resolve_path(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _interpolate_env(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate_env(v, env, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_env(v, env, where) for v in value]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set (used as ${{{name}}})")

        return _ENV_REF.sub(substitute, value)
    return value


def interpolate_env(value: Any, where: str, env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in strings (nested dicts and lists too)."""
    return _interpolate_env(value, dict(os.environ if env is None else env), where)


def _format_home(value: Any, home: str) -> Any:
    if isinstance(value, dict):
        return {k: _format_home(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_format_home(v, home) for v in value]
    if isinstance(value, str):
        return value.replace("{home}", home)
    return value


def _mask(text: str) -> str:
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _mask(value)
    return value
