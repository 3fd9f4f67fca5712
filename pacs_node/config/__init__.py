"""Configuration: pydantic models of the TOML file, loading, environment overrides.

Every section is a small typed class that is valid by construction; unknown keys are
errors.  Relative paths in the file are resolved against the directory of the file,
so a config works the same from any working directory.  The node's sections are in
:mod:`~pacs_node.config.sections`, destinations and sending in
:mod:`~pacs_node.config.destinations`, reading the file in :mod:`~pacs_node.config.loading`.
"""

from pacs_node.config.destinations import Destination, DestinationTLS, ObjectName, SendingConfig
from pacs_node.config.loading import (
    ENV_DATABASE_URL, ENV_PORT, ENV_SPOOL_DIR, ConfigError, load_settings, redacted_database_url,
)
from pacs_node.config.priors import PriorSource, PriorsConfig
from pacs_node.config.sections import (
    AllowedCaller, AnalysisConfig, CompletionConfig, ConsoleConfig, ConsoleTLS, LoggingConfig, NodeConfig, NodeTLS,
    ProxyProtocol, RetentionConfig, Settings, StorageConfig, WorkerConfig,
)

__all__ = [
    "ENV_DATABASE_URL", "ENV_PORT", "ENV_SPOOL_DIR", "AllowedCaller", "AnalysisConfig", "CompletionConfig",
    "ConfigError", "ConsoleConfig", "ConsoleTLS", "Destination", "DestinationTLS", "LoggingConfig", "NodeConfig",
    "NodeTLS", "ObjectName", "PriorSource", "PriorsConfig", "ProxyProtocol", "RetentionConfig", "SendingConfig",
    "Settings", "StorageConfig", "WorkerConfig",
    "load_settings", "redacted_database_url",
]
