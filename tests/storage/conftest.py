"""The S3 server fixture."""

from tests.storage.s3_server import s3_server  # noqa: F401 - a fixture
