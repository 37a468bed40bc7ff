"""`with Cluster() as cluster:` for the local clusters: start on enter, always shut down."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartedInWith:
    """A thing with `start()` and `shutdown()`: a failed start is shut down before it raises."""

    def start(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()
