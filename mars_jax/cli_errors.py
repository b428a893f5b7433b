"""What the command lines do with a user's mistake: one message naming it, an exit status, no
traceback. A bug (any other exception) keeps its traceback."""

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def user_errors_exit() -> Iterator[None]:
    """A bad config value exits 2 ("config error: ..."); a checkpoint that cannot be written,
    restored or converted, a bad bundle, a missing file, bad dataset files or examples exit 1
    ("error: ...")."""
    from mars_jax.typed_config import ConfigError

    try:
        yield
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (OSError, ValueError, RuntimeError) as error:
        from mars_jax.data.datasets import DatasetError
        from mars_jax.export.manifest import BundleError
        from mars_jax.tasks import ExampleError
        from mars_jax.train.checkpoint import CheckpointLayoutError, CheckpointSaveError
        from mars_jax.train.loop import CheckpointRestoreError

        if not isinstance(error, CheckpointSaveError | CheckpointLayoutError
                          | CheckpointRestoreError | FileNotFoundError | DatasetError
                          | ExampleError | BundleError):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
