"""A Bot API server on loopback for real aiogram: in-memory chats, injected updates, Telegram's error shapes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.unix_server import serve_tcp

BOT_ID = 4242
MAX_TEXT = 4096


@dataclass(slots=True)
class Sent:
    """One call the bot made, as Telegram received it."""

    method: str
    params: dict[str, Any]
    at: float


@dataclass(slots=True)
class FakeTelegram:
    token: str = "4242:fake-token"
    calls: list[Sent] = field(default_factory=list)
    messages: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    documents: list[tuple[int, str, bytes]] = field(default_factory=list)
    answered: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    webhook: dict[str, Any] | None = None
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _next_update: int = 1
    _next_message: int = 100
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _fail: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)

    # what tests do -----------------------------------------------------------------------------------------

    def send_text(self, user_id: int, text: str) -> int:
        """The user `user_id` writes `text` in their private chat with the bot; returns the message id."""
        message = self._user_message(user_id, text=text)
        self._push({"message": message})
        return int(message["message_id"])

    def send_document(self, user_id: int, name: str, content: bytes, caption: str) -> None:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = content
        doc = {"file_id": file_id, "file_unique_id": file_id, "file_name": name, "file_size": len(content)}
        self._push({"message": self._user_message(user_id, document=doc, caption=caption)})

    def press(self, user_id: int, chat_id: int, message_id: int, data: str) -> str:
        """`user_id` presses the button with callback `data` under the bot's message `message_id`."""
        query_id = f"cq-{self._next_update}"
        message = self.messages[(chat_id, message_id)]
        self._push({"callback_query": {"id": query_id, "from": _user(user_id), "chat_instance": str(chat_id),
                                       "message": message, "data": data}})
        return query_id

    def fail_next(self, method: str, status: int, description: str, **parameters: Any) -> None:
        """The next call of `method` gets this error instead of its result (e.g. 429 with retry_after)."""
        self._fail.setdefault(method, []).append((status, {"description": description, **(
            {"parameters": parameters} if parameters else {})}))

    def sent(self, method: str | None = None) -> list[Sent]:
        return [c for c in self.calls if method is None or c.method == method]

    def texts(self, chat_id: int) -> list[str]:
        """The current text of every message the bot has in `chat_id`, oldest first."""
        return [m.get("text", m.get("caption", "")) for (c, _), m in sorted(self.messages.items())
                if c == chat_id and m["from"]["id"] == BOT_ID]

    def buttons(self, chat_id: int, message_id: int) -> list[tuple[str, str]]:
        markup = self.messages[(chat_id, message_id)].get("reply_markup") or {"inline_keyboard": []}
        return [(b["text"], b["callback_data"]) for row in markup["inline_keyboard"] for b in row]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                changed = self._changed
                await changed.wait()

    # the Bot API -------------------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/bot{token}/{method}", self._endpoint, methods=["GET", "POST"]),
                                 Route("/file/bot{token}/{path:path}", self._file)])

    async def _endpoint(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.path_params["method"]
        params = await _params(request)
        self.calls.append(Sent(method, params, time.monotonic()))
        self._notify()
        failures = self._fail.get(method)
        if failures:
            status, body = failures.pop(0)
            return JSONResponse({"ok": False, "error_code": status, **body}, status_code=status)
        handler = getattr(self, "_m_" + method.lower(), None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        result = await handler(params)
        if isinstance(result, Response):
            return result
        return JSONResponse({"ok": True, "result": result})

    async def _m_getme(self, params: dict[str, Any]) -> Any:
        return {**_user(BOT_ID), "is_bot": True, "username": "agent_runner_bot", "first_name": "agent-runner"}

    async def _m_getupdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(params.get("timeout") or 0)):
                    await self._arrived.wait()
        return self._updates[: int(params.get("limit") or 100)]

    async def _m_sendmessage(self, params: dict[str, Any]) -> Any:
        text = str(params.get("text", ""))
        if len(text) > MAX_TEXT:
            return _error(400, "Bad Request: message is too long")
        chat_id = int(params["chat_id"])
        self._next_message += 1
        message = {"message_id": self._next_message, "date": int(time.time()), "chat": _chat(chat_id),
                   "from": {**_user(BOT_ID), "is_bot": True}, "text": text}
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        self.messages[(chat_id, self._next_message)] = message
        return message

    async def _m_editmessagetext(self, params: dict[str, Any]) -> Any:
        text = str(params.get("text", ""))
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key not in self.messages:
            return _error(400, "Bad Request: message to edit not found")
        if len(text) > MAX_TEXT:
            return _error(400, "Bad Request: message is too long")
        message = self.messages[key]
        markup = params.get("reply_markup")
        if message.get("text") == text and message.get("reply_markup") == markup:
            return _error(400, "Bad Request: message is not modified: specified new message content and reply "
                               "markup are exactly the same as a current content and reply markup of the message")
        message["text"] = text
        message.pop("reply_markup", None)
        if markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return message

    async def _m_editmessagereplymarkup(self, params: dict[str, Any]) -> Any:
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key not in self.messages:
            return _error(400, "Bad Request: message to edit not found")
        message = self.messages[key]
        markup = params.get("reply_markup") or None
        if message.get("reply_markup") == markup:
            return _error(400, "Bad Request: message is not modified: specified new message content and reply "
                               "markup are exactly the same as a current content and reply markup of the message")
        message.pop("reply_markup", None)
        if markup and markup.get("inline_keyboard"):
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return message

    async def _m_senddocument(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        upload = params.get("document")
        if isinstance(upload, str) and upload.startswith("attach://"):  # aiogram names the multipart field
            upload = params.get(upload.removeprefix("attach://"))
        if not isinstance(upload, tuple):
            return _error(400, "Bad Request: there is no document in the request")
        name, content = upload
        self.documents.append((chat_id, name, content))
        self._next_message += 1
        message = {"message_id": self._next_message, "date": int(time.time()), "chat": _chat(chat_id),
                   "from": {**_user(BOT_ID), "is_bot": True}, "caption": str(params.get("caption", "")),
                   "document": {"file_id": f"doc-{self._next_message}", "file_unique_id": f"u{self._next_message}",
                                "file_name": name, "file_size": len(content)}}
        self.messages[(chat_id, self._next_message)] = message
        return message

    async def _m_answercallbackquery(self, params: dict[str, Any]) -> Any:
        self.answered.append(params)
        return True

    async def _m_getfile(self, params: dict[str, Any]) -> Any:
        file_id = str(params["file_id"])
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_unique_id": file_id, "file_size": len(self.files[file_id]),
                "file_path": f"documents/{file_id}"}

    async def _m_setwebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = params
        return True

    async def _m_deletewebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        return True

    async def _file(self, request: Request) -> Response:
        file_id = request.path_params["path"].rsplit("/", 1)[-1]
        if request.path_params["token"] != self.token or file_id not in self.files:
            return Response(status_code=404)
        return Response(self.files[file_id], media_type="application/octet-stream")

    # internals ---------------------------------------------------------------------------------------------

    def _user_message(self, user_id: int, **content: Any) -> dict[str, Any]:
        self._next_message += 1
        message = {"message_id": self._next_message, "date": int(time.time()), "chat": _chat(user_id),
                   "from": _user(user_id), **content}
        text = content.get("text") or content.get("caption") or ""
        if text.startswith("/"):
            key = "entities" if "text" in content else "caption_entities"
            message[key] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        self.messages[(user_id, self._next_message)] = message
        return message

    def _push(self, update: dict[str, Any]) -> None:
        self._updates.append({"update_id": self._next_update, **update})
        self._next_update += 1
        self._arrived.set()
        self._arrived = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}


def _chat(chat_id: int) -> dict[str, Any]:
    return {"id": chat_id, "type": "private", "first_name": f"user{chat_id}"}


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error_code": status, "description": description}, status_code=status)


async def _params(request: Request) -> dict[str, Any]:
    # aiogram posts multipart form data; values that are objects (reply_markup) arrive as JSON text.
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        if request.headers.get("content-type", "").startswith("application/json"):
            params.update(await request.json())
        else:
            async with request.form() as form:  # closes the spooled upload files
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        params[key] = (value.filename or key, await value.read())
                    else:
                        params[key] = _decode(key, value)
    return params


def _decode(key: str, value: str) -> Any:
    if key in ("reply_markup", "allowed_updates", "entities", "link_preview_options"):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    return value


@contextlib.asynccontextmanager
async def serve(fake: FakeTelegram) -> AsyncIterator[str]:
    """Run `fake` with uvicorn on 127.0.0.1 in this event loop; yields the base URL aiogram takes."""
    async with serve_tcp(fake.app()) as url:
        try:
            yield url
        finally:
            fake._arrived.set()  # release a pending long poll so the server can stop
