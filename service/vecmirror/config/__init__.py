"""The mirrors file: which table feeds which Redis index, validated once before anything starts.

The YAML shape is a contract with users (see README, "Configuration"): extend it, never rename a key.
Every problem is collected and reported together, each naming the mirror and the key that is wrong.
"""

from vecmirror.config.checks import index_prefix
from vecmirror.config.load import load_config, parse_config
from vecmirror.config.model import (
    BACKENDS,
    BF16_CPU_BACKEND,
    CPU_BACKEND,
    CUDA_BACKEND,
    DEFAULT_MODEL,
    META_HASH_FIELD,
    META_KEY_FIELD,
    META_VERSION_FIELD,
    OWN_KEY_PREFIX,
    RESERVED_PREFIX,
    Backend,
    ChunksConfig,
    Config,
    EmbedConfig,
    MirrorConfig,
    ModelSpec,
    RelatedConfig,
    field_type,
    split_table_name,
    template_columns,
)

__all__ = [
    "BACKENDS",
    "BF16_CPU_BACKEND",
    "CPU_BACKEND",
    "CUDA_BACKEND",
    "DEFAULT_MODEL",
    "META_HASH_FIELD",
    "META_KEY_FIELD",
    "META_VERSION_FIELD",
    "OWN_KEY_PREFIX",
    "RESERVED_PREFIX",
    "Backend",
    "ChunksConfig",
    "Config",
    "EmbedConfig",
    "MirrorConfig",
    "ModelSpec",
    "RelatedConfig",
    "field_type",
    "index_prefix",
    "load_config",
    "parse_config",
    "split_table_name",
    "template_columns",
]
