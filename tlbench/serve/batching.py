"""Micro-batching: concurrent requests that arrive within a few milliseconds share one forward pass.

On a CPU one forward pass of 8 images costs much less than 8 passes of one (weights stay in cache, the
convolutions vectorise over the batch), so under concurrent load throughput rises for a latency cost of at most
``window_ms``. The window is only waited for while other requests are on their way (announced with
``on_its_way`` while their upload decodes): a lone request runs at once, so batching costs nothing at low load.
A single worker runs the forward passes one after another on its own thread; the event loop only queues tensors
and hands results back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


class MicroBatcher:
    """Collects up to ``max_batch`` queued inputs into one batch, waiting at most ``window_ms`` after the first for
    inputs still on their way.

    ``max_batch=1`` turns batching off: every request gets its own forward pass, still one at a time.
    """

    def __init__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 8, window_ms: float = 5.0
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.forward = forward
        self.max_batch = max_batch
        self.window_s = window_ms / 1000
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlbench-inference")
        self._worker: asyncio.Task | None = None
        self._on_the_way = 0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, tensor: torch.Tensor) -> torch.Tensor:
        """The probabilities of one preprocessed image (``3 x S x S``), computed in some batch."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((tensor, future))
        return await future

    @contextmanager
    def on_its_way(self) -> Iterator[Callable[[torch.Tensor], Awaitable[torch.Tensor]]]:
        """Announce an input being prepared (an upload decoding), so a batch forming meanwhile waits for it (up to
        the window); yields the ``submit`` to hand it in with. Leaving without submitting withdraws it."""
        self._on_the_way += 1
        pending = True

        async def submit(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal pending
            self._on_the_way -= 1
            pending = False
            return await self.submit(tensor)

        try:
            yield submit
        finally:
            if pending:
                self._on_the_way -= 1

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or not self._on_the_way:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(tensor, future) for tensor, future in batch if not future.done()]  # done: the client went away

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                probabilities = await loop.run_in_executor(
                    self._executor, self.forward, torch.stack([tensor for tensor, _ in batch])
                )
            except Exception as error:  # a failed pass fails its requests (500), never the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), row in zip(batch, probabilities):
                if not future.done():
                    future.set_result(row)
