"""A Responses reply's output items, built once for every way a client sees them (the created
response, its stream, a later GET): the message, if the reply has text or no calls, then one
`function_call` item per call. Item ids derive from the response id, so a stream names each
item before the reply is stored and a GET names it the same."""

from __future__ import annotations

from typing import Literal, Protocol

from aiohttp import web

from threadloom import tools
from threadloom.engine import Result, TokenEvent
from threadloom.server import sse
from threadloom.server.errors import ApiError
from threadloom.server.schemas import responses as s
from threadloom.server.schemas.items import CompactionItem, FunctionCallItem

Status = Literal["in_progress", "completed", "incomplete"]


class Draft(Protocol):
    """The response a stream reports on (routes/responses.py's `_Draft`)."""

    @property
    def id(self) -> str: ...
    @property
    def compaction(self) -> CompactionItem | None:
        """The compaction `context_management` made before generating: the first item."""
        ...

    def build(
        self,
        status: str,
        output: list[s.OutputItem],
        usage: s.ResponseUsage | None,
        result: Result | None = None,
    ) -> s.ResponseObject: ...
    def finished(self, result: Result) -> s.ResponseObject: ...


def message_id(response_id: str) -> str:
    """The id of a response's output message."""
    return "msg_" + response_id.removeprefix("resp_")


def call_item_id(response_id: str, index: int) -> str:
    """The id of a response's `index`th function call item."""
    return f"fc_{response_id.removeprefix('resp_')}_{index}"


def item_status(status: str) -> Status:
    return "incomplete" if status in ("incomplete", "failed") else status  # type: ignore[return-value]


def message(item_id: str, text: str, status: str) -> s.OutputMessage:
    return s.OutputMessage(
        id=item_id, status=item_status(status), content=[s.OutputText(text=text)]
    )


def call_item(response_id: str, index: int, call: tools.ToolCall, status: str) -> FunctionCallItem:
    return FunctionCallItem(
        id=call_item_id(response_id, index),
        call_id=call.id,
        name=call.name,
        arguments=call.arguments,
        status=item_status(status),
    )


def output(
    response_id: str, text: str, calls: tuple[tools.ToolCall, ...], status: str
) -> list[s.OutputItem]:
    items: list[s.OutputItem] = []
    if text or not calls:
        items.append(message(message_id(response_id), text, status))
    items.extend(call_item(response_id, i, c, status) for i, c in enumerate(calls))
    return items


class ResponsesStream:
    """The Responses API's typed events, numbered. Text goes out as the message's
    `output_text.delta`s; with tools, the reply's calls go out as `function_call` items
    (`output_item.added`, `function_call_arguments.delta`s, `.done`, `output_item.done`), and
    never as text. A failed generation ends with `response.failed` carrying the stored failed
    response, as OpenAI does."""

    def __init__(self, draft: Draft, scanner: tools.CallScanner | None) -> None:
        self.draft = draft
        self.scanner = scanner
        self.seq = 0
        self.index = 0  # the next output item's index
        self.text: list[str] | None = None  # the open message's text (None: none open)
        self.message_index = 0
        self.call: tuple[int, str, tools.CallStarted] | None = None  # index, item id, call

    def _send(self, out: sse.Frames, event: s._Event) -> None:
        event.sequence_number = self.seq
        self.seq += 1
        tag = type(event).__struct_config__.tag
        out.add(sse.frame(event, tag))  # type: ignore[arg-type]

    async def open(self, request: web.Request) -> web.StreamResponse:
        return await sse.open_stream(request)

    def start(self, out: sse.Frames) -> None:
        in_progress = self.draft.build("in_progress", [], None)
        self._send(out, s.ResponseCreated(sequence_number=0, response=in_progress))
        self._send(out, s.ResponseInProgress(sequence_number=0, response=in_progress))
        compaction = self.draft.compaction
        if compaction is not None:
            for event in (s.OutputItemAdded, s.OutputItemDone):
                self._send(out, event(sequence_number=0, output_index=0, item=compaction))
            self.index = 1
        if self.scanner is None:
            # Without tools the reply is a message: announced at once, as OpenAI does.
            self._open_message(out)

    def _open_message(self, out: sse.Frames) -> None:
        item_id = message_id(self.draft.id)
        self.text, self.message_index = [], self.index
        self.index += 1
        empty = message(item_id, "", "in_progress")
        empty.content = []
        added = s.OutputItemAdded(sequence_number=0, output_index=self.message_index, item=empty)
        self._send(out, added)
        part = s.ContentPartAdded(
            sequence_number=0,
            item_id=item_id,
            output_index=self.message_index,
            content_index=0,
            part=s.OutputText(text=""),
        )
        self._send(out, part)

    def _close_message(self, out: sse.Frames, status: str) -> None:
        if self.text is None:
            return
        item_id, index, text = message_id(self.draft.id), self.message_index, "".join(self.text)
        self._send(
            out,
            s.OutputTextDone(
                sequence_number=0, item_id=item_id, output_index=index, content_index=0, text=text
            ),
        )
        part = s.ContentPartDone(
            sequence_number=0,
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=s.OutputText(text=text),
        )
        self._send(out, part)
        done = message(item_id, text, status)
        self._send(out, s.OutputItemDone(sequence_number=0, output_index=index, item=done))
        self.text = None

    def token(self, out: sse.Frames, event: TokenEvent) -> None:
        if event.reasoning or not event.text:
            return
        if self.scanner is None:
            self._text(out, event.text)
            return
        for piece in self.scanner.feed(event.text):
            self._piece(out, piece)

    def _text(self, out: sse.Frames, text: str) -> None:
        if self.text is None:
            self._open_message(out)
        assert self.text is not None
        self.text.append(text)
        delta = s.OutputTextDelta(
            sequence_number=0,
            item_id=message_id(self.draft.id),
            output_index=self.message_index,
            content_index=0,
            delta=text,
        )
        self._send(out, delta)

    def _piece(self, out: sse.Frames, piece: tools.Piece) -> None:
        if isinstance(piece, tools.Text):
            self._text(out, piece.text)
        elif isinstance(piece, tools.CallStarted):
            self._close_message(out, "completed")  # calls come after the text
            item_id = call_item_id(self.draft.id, piece.index)
            self.call = (self.index, item_id, piece)
            started = tools.ToolCall(id=piece.id, name=piece.name, arguments="")
            item = call_item(self.draft.id, piece.index, started, "in_progress")
            self._send(
                out, s.OutputItemAdded(sequence_number=0, output_index=self.index, item=item)
            )
            self.index += 1
        elif isinstance(piece, tools.CallArguments) and self.call is not None:
            index, item_id, _ = self.call
            delta = s.FunctionCallArgumentsDelta(
                sequence_number=0, item_id=item_id, output_index=index, delta=piece.delta
            )
            self._send(out, delta)
        elif isinstance(piece, tools.CallDone) and self.call is not None:
            index, item_id, _ = self.call
            call = piece.call
            self._send(
                out,
                s.FunctionCallArgumentsDone(
                    sequence_number=0,
                    item_id=item_id,
                    output_index=index,
                    name=call.name,
                    arguments=call.arguments,
                ),
            )
            item = call_item(self.draft.id, piece.index, call, "completed")
            self._send(out, s.OutputItemDone(sequence_number=0, output_index=index, item=item))
            self.call = None

    async def finish(self, out: sse.Frames, result: Result) -> None:
        if self.scanner is not None:
            for piece in self.scanner.finish():
                self._piece(out, piece)
        final = self.draft.finished(result)
        if self.call is not None:  # cut off (max_output_tokens): not a call; its item ends
            index, _, started = self.call
            cut = tools.ToolCall(id=started.id, name=started.name, arguments="")
            item = call_item(self.draft.id, started.index, cut, "incomplete")
            self._send(out, s.OutputItemDone(sequence_number=0, output_index=index, item=item))
        elif self.text is None and not result.tool_calls:
            self._open_message(out)  # an empty reply is still a message
        self._close_message(out, result.status)
        end: type[s.ResponseCompleted | s.ResponseIncomplete | s.ResponseFailed] = (
            s.ResponseCompleted
            if result.status == "completed"
            else s.ResponseIncomplete
            if result.status == "incomplete"
            else s.ResponseFailed
        )
        self._send(out, end(sequence_number=0, response=final))

    def error(self, out: sse.Frames, error: ApiError) -> None:
        frame = s.StreamError(sequence_number=0, code=error.code, message=error.message)
        self._send(out, frame)
