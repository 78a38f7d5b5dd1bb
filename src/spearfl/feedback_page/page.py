"""The device's feedback page: ask, see the model's answer, mark it, hint, judge the revision.

A small FastAPI app serving one static HTML page (no external scripts or styles) and a JSON API.
Every answer the page acknowledges is already committed to the device's inbox
(``FeedbackStore``). Inputs are bounded (64 KB per request body, 2,000 characters per question,
1,000 per hint); the page shows every text with ``textContent``, so HTML in a question, an
answer or a hint is displayed, never run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, StringConstraints

from spearfl.feedback.store import (
    MAX_HINT_CHARS,
    MAX_PROMPT_CHARS,
    FeedbackStore,
    Interaction,
    StoreError,
    UnknownInteraction,
)
from spearfl.feedback_page.model import DeviceModel

MAX_BODY_BYTES = 64 * 1024
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class AskBody(BaseModel):
    request_id: RequestId
    """Chosen by the page for each new question; a retry with the same id is answered from the
    inbox instead of asking twice."""
    question: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] | None = None
    example_uid: Annotated[str, StringConstraints(max_length=200)] | None = None


class VerdictBody(BaseModel):
    verdict: Literal["right", "wrong"]
    hint: Annotated[str, StringConstraints(max_length=MAX_HINT_CHARS)] | None = None


class RevisionVerdictBody(BaseModel):
    verdict: Literal["right", "wrong"]


class RoundTrigger:
    """Lets the page start the next federated round on a single machine (``spearfl serve``)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.requested = 0

    def request(self) -> int:
        self.requested += 1
        self._event.set()
        return self.requested

    def wait(self, timeout: float | None = None) -> bool:
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(
    device: DeviceModel,
    store: FeedbackStore,
    trigger: RoundTrigger | None = None,
    status_extra: Callable[[], dict] | None = None,
) -> FastAPI:
    app = FastAPI(title="SPEAR-FL device", docs_url=None, redoc_url=None, openapi_url=None)
    store_lock = threading.Lock()  # one sqlite connection, used from the server's threads

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse(
                {"detail": f"request body is larger than {MAX_BODY_BYTES // 1024} KB"},
                status_code=413,
            )
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse(
                {"detail": f"request body is larger than {MAX_BODY_BYTES // 1024} KB"},
                status_code=413,
            )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(error)}, status_code=422)

    @app.exception_handler(UnknownInteraction)
    async def unknown(_: Request, error: UnknownInteraction) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(StoreError)
    async def refused(_: Request, error: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    def stored(call: Callable[[], Interaction]) -> Interaction:
        with store_lock:
            return call()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        page_file = resources.files("spearfl.feedback_page").joinpath("static/index.html")
        return page_file.read_text("utf-8")

    @app.get("/api/status")
    def status() -> dict:
        with store_lock:
            total = store.count()
            waiting = store.count_waiting()  # polled every 2 s: a count, not the rows
        info = {
            "client_id": device.client_id,
            "round": device.refresh(),
            "interactions": total,
            "waiting_for_training": waiting,
            "queue": len(device.queue),
            "can_start_round": trigger is not None,
        }
        if status_extra is not None:
            info.update(status_extra())
        return info

    @app.get("/api/queue")
    def queue(limit: int = 12) -> list[dict]:
        return [
            {"uid": ex.uid, "text": device.queue_text(ex)}
            for ex in device.queue[: max(0, min(limit, 100))]
        ]

    @app.get("/api/interactions")
    def recent(limit: int = 50) -> list[dict]:
        with store_lock:
            return [i.public() for i in store.recent(max(1, min(limit, 500)))]

    @app.post("/api/ask")
    def ask(body: AskBody) -> dict:
        if not body.example_uid and not (body.question or "").strip():
            raise StoreError("type a question or pick one from the list")
        try:
            prompt = device.question(body.question, body.example_uid)
        except KeyError:
            raise StoreError(f"no question {body.example_uid!r} on this device") from None
        with store_lock:  # a retried request is answered from the inbox, not asked again
            existing = store.find_request(body.request_id)
        if existing is not None:
            return existing.public()
        answer, served = device.answer(prompt)
        item = stored(
            lambda: store.add_answer(
                request_id=body.request_id,
                prompt=prompt.text,
                messages=prompt.messages,
                assistant_prefix=prompt.assistant_prefix,
                example_uid=body.example_uid,
                answer=answer,
                adapter_round=served,
            )[0]
        )
        return item.public()

    @app.post("/api/interactions/{interaction_id}/verdict")
    def verdict(interaction_id: int, body: VerdictBody) -> dict:
        item = stored(lambda: store.set_verdict(interaction_id, body.verdict, body.hint))
        if item.verdict == "wrong":
            prompt = device.question(item.prompt, item.example_uid)
            revision, served = device.revise(prompt, item.answer, item.hint or "")
            item = stored(lambda: store.add_revision(interaction_id, revision, served))
        return item.public()

    @app.post("/api/interactions/{interaction_id}/revision-verdict")
    def revision_verdict(interaction_id: int, body: RevisionVerdictBody) -> dict:
        return stored(lambda: store.set_revision_verdict(interaction_id, body.verdict)).public()

    @app.post("/api/round")
    def start_round() -> dict:
        if trigger is None:
            raise StoreError("rounds are started by the federation's server, not by this page")
        return {"requested": trigger.request()}

    return app
