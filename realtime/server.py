"""`realtime serve`: the engine and the web server in one process.

    browser ── GET /            ──► client/ (static page, no build step)
            ── POST /offer {sdp} ─► Conversation: aiortc peer + engine session ──► {sdp answer}
            ◄═ RTP audio, data channel "events" ═► transports/webrtc/ (turns, playout, interrupts)
    OpenAI Realtime client ── GET /v1/realtime (WebSocket) ═► transports/openai/: JSON events,
            base64 audio both ways, on one engine session
    Twilio ── POST /twilio/voice ─► TwiML; ══ GET /twilio/media (WebSocket) ═► transports/twilio/:
            a phone call's mu-law audio both ways, on one engine session
    GET /healthz ──► {"ok", "sessions", "max_sessions", "decode_steps", ...} (503 with "error"
            once the engine is down, or while the server shuts down)

The event loop only moves bytes and JSON; the engine's thread runs the model. Each client's bad
input is answered with a JSON error and costs nobody else anything. Every call, whichever door
it came by, is held to the same limits (transports/lifetime.py): the server sweeps them once a
second and ends those idle or too long, or all of them once the engine is down; one client
address may hold only so many; on SIGTERM new callers are refused, answers in progress may
finish for a grace period, and every caller is told before its call closes.
"""

import asyncio
import gc
import hmac
import ipaddress
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.typedefs import Handler

from realtime.decoding.runtime import Runtime
from realtime.engine.engine import Engine, EngineBusy, EngineDown, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.model.prompts import Task
from realtime.server_config import LOCAL_HOSTS, ServerOptions
from realtime.transports import lifetime, turn_taking
from realtime.transports.lifetime import Clock, Closing
from realtime.transports.openai.connection import HEARTBEAT_S, MAX_MESSAGE_BYTES, RealtimeConnection
from realtime.transports.twilio import connection as twilio
from realtime.transports.webrtc import protocol
from realtime.transports.webrtc.connection import Conversation
from realtime.transports.websocket import WebSocketDoor

log = logging.getLogger("realtime.server")
API_KEY_PROTOCOL = "openai-insecure-api-key."
SWEEP_S = 1.0  # how often the calls are checked against the limits
HANG_UP_S = 5.0  # the longest a call may take to close once the server has ended it
SLOW_COLLECTION_S = 0.05  # a garbage collection this long is logged (settle_collector)


class Call(Protocol):
    """A call as the server's limits see it, whichever door it came by."""

    clock: Clock
    closed: bool
    closing: Closing | None
    address: str  # the client's (client_address)

    @property
    def busy(self) -> bool: ...

    async def hang_up(self, closing: Closing) -> None: ...


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(protocol.error(code, message), status=status)


def refusal(exc: EngineBusy) -> web.Response:
    """No session to be had: for now (busy), or until the server restarts (engine_down)."""
    if isinstance(exc, EngineDown):
        return json_error(503, "engine_down", f"the server cannot answer calls: {exc}")
    return json_error(503, "busy", f"the server is busy: {exc}; try again later")


@web.middleware
async def json_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404 and 405 (an unknown path, a missing static file, a wrong method), as
    JSON errors like every other refusal."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return json_error(404, "not_found", f"nothing at {request.path}; the page is at /")
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        answer = json_error(405, "method_not_allowed", f"{request.path} takes {', '.join(allowed)}")
        answer.headers["Allow"] = ",".join(allowed)
        return answer


class Server:
    """The HTTP side: static files, signaling, and the set of live conversations."""

    def __init__(self, engine: Engine, options: ServerOptions) -> None:
        self.engine, self.options = engine, options
        self.conversations: set[Conversation] = set()
        self.connections: set[WebSocketDoor] = set()
        self.shutting_down = False  # SIGTERM: no new calls
        self._tasks: set[asyncio.Task] = set()  # calls being hung up
        self._sweeper: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=protocol.MAX_MESSAGE_BYTES, middlewares=[json_refusals]
        )
        app.router.add_post("/offer", self.offer)
        app.router.add_route("*", "/offer", self.offer_how)  # (else the static files' 404)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/v1/realtime", self.realtime)
        app.router.add_post(twilio.VOICE_PATH, self.twilio_voice)
        app.router.add_get(twilio.MEDIA_PATH, self.twilio_media)
        app.router.add_get("/", self.index)
        app.router.add_get("/{name}", self.client_file)
        app.on_startup.append(self._start_sweeping)
        app.on_shutdown.append(self._close_all)
        app.on_cleanup.append(self._stop_sweeping)
        return app

    def calls(self) -> Iterator[Call]:
        """Every live call, WebRTC and WebSocket."""
        yield from list(self.conversations)
        yield from list(self.connections)

    # --- limits and shutdown ----------------------------------------------------------------

    async def _start_sweeping(self, app: web.Application) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _stop_sweeping(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """End the calls past a limit, or every call once the engine is down."""
        call_options, down = self.options.call, self.engine.down
        for call in self.calls():
            if call.closed or call.closing is not None:
                continue
            if down is not None:
                closing: Closing | None = Closing(
                    lifetime.ENGINE_DOWN, f"the server cannot answer calls: {down}"
                )
            else:
                idle_s, max_s = call_options.idle_timeout_s, call_options.max_session_s
                closing = call.clock.overdue(idle_s, max_s, call.busy, now)
            if closing is not None:
                self._spawn(call.hang_up(closing))

    async def shut_down(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Refuse new calls; end each call once its answer in progress is over, and all of them
        after `grace_s` (or at once when `hurry` is set: a second signal)."""
        self.shutting_down = True
        live = sum(1 for _ in self.calls())
        log.info("shutting down: %d calls; answers in progress may end within %g s", live, grace_s)
        closing = Closing(lifetime.SHUTDOWN, "the server is shutting down")
        deadline = time.monotonic() + grace_s
        while open_calls := [c for c in self.calls() if not c.closed and c.closing is None]:
            late = hurry.is_set() or time.monotonic() >= deadline
            for call in open_calls:
                if late or not call.busy:
                    self._spawn(call.hang_up(closing))
            await asyncio.sleep(0.05)
        if self._tasks:  # (the calls hung up: their closing events out, their connections shut)
            await asyncio.wait(list(self._tasks), timeout=HANG_UP_S)

    def _spawn(self, coro: Coroutine) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refused(self, request: web.Request, address: str) -> web.Response | None:
        """A new call refused before it takes a slot: the server is shutting down, or this
        client address holds its share of the sessions already."""
        if self.shutting_down:
            return json_error(503, "shutting_down", "the server is shutting down; try again later")
        cap = self._cap_for(address)
        if cap is not None and sum(1 for c in self.calls() if c.address == address) >= cap:
            log.info("%s refused: %s holds %d sessions already", request.path, address, cap)
            message = (
                f"{address} holds {cap} sessions already, this server's most for one client"
                " (--max-sessions-per-client)"
            )
            return json_error(429, "too_many_sessions", message)
        return None

    def _cap_for(self, address: str) -> int | None:
        """Sessions one client address may hold: --max-sessions-per-client (0: no cap); by
        default, on a server without a token, half the slots for a client beyond this machine
        (through a proxy here, such as a tunnel), and no cap for programs on this machine."""
        cap = self.options.max_sessions_per_client
        if cap is not None:
            return cap or None
        if self.options.token is not None or _loopback(address):
            return None
        return max(1, self.options.max_sessions // 2)

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = self.options.client_dir / "index.html"
        if not page.is_file():
            return json_error(404, "no_client", f"{page} is missing")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def client_file(self, request: web.Request) -> web.StreamResponse:
        """The page's other files (client/ is flat); a missing one is json_refusals' 404."""
        root = self.options.client_dir.resolve()
        path = (root / request.match_info["name"]).resolve()
        if path.parent != root or not path.is_file():  # (names arrive %-decoded: "../x")
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def health(self, request: web.Request) -> web.Response:
        """200 while the engine serves; 503 with the reason once its thread has died or the
        server is shutting down, so that a load balancer sends callers elsewhere."""
        down = self.engine.down
        health: dict[str, bool | int | str] = {
            "ok": down is None and not self.shutting_down,
            "sessions": len(self.conversations) + len(self.connections),
            "engine_sessions": self.engine.active_sessions,
            "max_sessions": self.options.max_sessions,
            "decode_steps": self.engine.steps,
            # early answers begun at a pause and dropped when the caller went on
            "discarded_steps": self.engine.discarded_steps,
        }
        if down is not None:
            health["error"] = down
        elif self.shutting_down:
            health["error"] = "shutting down"
        return web.json_response(health, status=200 if health["ok"] else 503)

    async def offer(self, request: web.Request) -> web.Response:
        """SDP offer in, SDP answer out; every refusal is a JSON error with a clear code."""
        if not self._authorized(request):
            return json_error(401, "unauthorized", "missing or wrong token (Authorization: Bearer)")
        address = client_address(request)
        refused = self._refused(request, address)
        if refused is not None:
            return refused
        try:
            sdp = protocol.parse_offer(await request.read())
        except web.HTTPRequestEntityTooLarge:
            limit = protocol.MAX_MESSAGE_BYTES
            return json_error(413, "too_large", f"offers are at most {limit} bytes")
        except protocol.ProtocolError as exc:
            return json_error(413 if exc.code == "too_large" else 400, exc.code, str(exc))
        return await self._start_conversation(sdp, address)

    async def offer_how(self, request: web.Request) -> web.Response:
        """Anything but a POST at /offer, such as a browser opening it: say what it takes."""
        message = 'POST an SDP offer here as JSON {"type": "offer", "sdp": "..."}'
        answer = json_error(405, "method_not_allowed", f"{message} (client/PROTOCOL.md)")
        answer.headers["Allow"] = "POST"
        return answer

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        """An OpenAI-Realtime-compatible WebSocket; refusals come before the upgrade, as JSON."""
        if not self._authorized(request):
            return json_error(401, "unauthorized", "missing or wrong token (Authorization: Bearer)")
        if self.options.token is None and cross_site(request.headers.get("Origin"), request.host):
            # WebSockets skip the browser's same-origin checks: without a token, any page the
            # user opens could use this server. Pages on this machine, and programs, may.
            message = "a page from another site may connect only to a server with --token"
            return json_error(403, "cross_site", message)
        ws = web.WebSocketResponse(
            protocols=("realtime",), max_msg_size=MAX_MESSAGE_BYTES, heartbeat=HEARTBEAT_S
        )
        ga = "realtime=v1" not in request.headers.get("OpenAI-Beta", "")
        connection = RealtimeConnection(ws, self.options.call, self.options.model_name, ga)
        # (the client may ask for its turns' transcripts at any time: a row is kept for them)
        return await self._serve_websocket(request, ws, connection, transcribe=True)

    async def _serve_websocket(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        door: WebSocketDoor,
        transcribe: bool = False,
    ) -> web.StreamResponse:
        """Open the door's engine session (a full server refuses before the upgrade), then serve
        the WebSocket until it ends; the slot is free again when this returns."""
        door.address = client_address(request)
        refused = self._refused(request, door.address)
        if refused is not None:
            door.close("refused")
            return refused
        try:
            options = self._session_options(transcribe)
            door.handle = self.engine.open_session(options, door.sink)
        except EngineBusy as exc:
            door.close("the engine is down" if isinstance(exc, EngineDown) else "busy")
            log.info("%s refused: %s", request.path, exc)
            return refusal(exc)
        self.connections.add(door)
        log.info("session %d opened (%s)", door.sid, request.path)
        try:
            await ws.prepare(request)
            await door.run()
        finally:
            door.close("the connection ended")
            self.connections.discard(door)
        return ws

    async def twilio_voice(self, request: web.Request) -> web.Response:
        """The phone number's voice webhook: connect the call to our media stream."""
        try:  # (a multipart part without a name or with a broken header, a charset=bogus)
            form = await request.post()
        except (ValueError, LookupError, BadHttpMessage) as exc:
            message = " ".join(str(exc).split())  # (some of aiohttp's span lines)
            return json_error(400, "bad_form", f"the body is not a form: {message}")
        params = {name: form.getall(name) for name in form}
        refusal = self._twilio_refusal(request, self._public(request) + request.path_qs, params)
        if refusal is not None:
            return refusal
        try:
            chosen = twilio.turn_choices(request.query)
        except ValueError as exc:
            return json_error(400, "bad_value", str(exc))
        media_url = twilio.stream_url(self._public(request))
        return web.Response(text=twilio.twiml(media_url, chosen), content_type="text/xml")

    async def twilio_media(self, request: web.Request) -> web.StreamResponse:
        """One phone call's Media Streams WebSocket."""
        media_url = twilio.stream_url(self._public(request))
        refusal = self._twilio_refusal(request, media_url, {})
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(
            max_msg_size=twilio.MAX_MESSAGE_BYTES, heartbeat=twilio.HEARTBEAT_S
        )
        return await self._serve_websocket(request, ws, twilio.TwilioCall(ws, self.options.call))

    def _twilio_refusal(self, request: web.Request, url: str, params: dict) -> web.Response | None:
        auth_token = self.options.twilio_auth_token
        if auth_token is None:
            if self.options.token is None:  # a server open to anyone on this machine
                return None
            message = (
                "phone calls need --twilio-auth-token and --public-url on a server with --token"
            )
            return json_error(403, "twilio_not_verified", message)
        given = request.headers.get("X-Twilio-Signature", "")
        if twilio.signed_by_twilio(auth_token, url, params, given):
            return None
        log.info("refused a Twilio request: X-Twilio-Signature does not match %s", url)
        return json_error(403, "bad_signature", f"X-Twilio-Signature does not match {url}")

    def _public(self, request: web.Request) -> str:
        """The server's URL as callers (Twilio) reach it: --public-url, else this request's."""
        if self.options.public_url is not None:
            return self.options.public_url.rstrip("/")
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
        return f"{scheme}://{request.host}"

    def _session_options(self, transcribe: bool) -> SessionOptions:
        call = self.options.call
        return SessionOptions(
            Task.A2A,
            "chunked",
            keep_history=call.history,
            history_positions=call.history_positions,
            transcribe=transcribe,
            decoding=call.decoding,
        )

    async def _start_conversation(self, sdp: str, address: str) -> web.Response:
        conversation = Conversation(self.options.call, self.conversations.discard)
        conversation.address = address
        try:
            conversation.handle = self.engine.open_session(
                self._session_options(self.options.call.transcribe), conversation.sink
            )
        except EngineBusy as exc:
            await conversation.close("engine down" if isinstance(exc, EngineDown) else "busy")
            log.info("offer refused: %s", exc)
            return refusal(exc)
        self.conversations.add(conversation)
        try:
            answer = await conversation.answer(sdp)
        except Exception as exc:  # aiortc rejects what it cannot parse or negotiate
            await conversation.close(f"bad offer: {exc}")
            return json_error(400, "bad_sdp", f"malformed or unusable SDP: {exc}")
        log.info("session %d opened (%d live)", conversation.sid, len(self.conversations))
        return web.json_response({"type": "answer", "sdp": answer, "session": conversation.sid})

    def _authorized(self, request: web.Request) -> bool:
        """The token as `Authorization: Bearer T`, or (browsers' WebSockets cannot set headers)
        as the subprotocol `openai-insecure-api-key.T`, as OpenAI's clients send it."""
        if self.options.token is None:
            return True
        given = [request.headers.get("Authorization", "").removeprefix("Bearer ").strip()]
        for protocol_ in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            given.append(protocol_.strip().removeprefix(API_KEY_PROTOCOL))
        expected = self.options.token.encode()
        return any(hmac.compare_digest(g.encode(), expected) for g in given if g)

    async def _close_all(self, app: web.Application) -> None:
        for connection in list(self.connections):
            connection.close("server shutting down")
        await asyncio.gather(
            *(c.close("server shutting down") for c in list(self.conversations)),
            *(c.ws.close(code=WSCloseCode.GOING_AWAY) for c in list(self.connections)),
        )


def client_address(request: web.Request) -> str:
    """Who is calling: the peer's address, or where the peer is a proxy on this machine (a
    tunnel such as ngrok, a local nginx), the address that proxy names last in X-Forwarded-For
    (the one it saw; earlier ones are the client's to write)."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
    return forwarded if forwarded and _loopback(peer) else peer


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def cross_site(origin: str | None, host: str) -> bool:
    """A browser page from elsewhere than this server or this machine (programs send no Origin)."""
    if origin is None:
        return False
    origin_host = urlsplit(origin).hostname or ""
    return urlsplit(origin).netloc != host and origin_host not in LOCAL_HOSTS


async def serve(runtime: Runtime, options: ServerOptions, ready: Callable[[str], None]) -> None:
    """Run until SIGINT/SIGTERM; `ready(url)` is called once the port is open."""
    # On CUDA building the engine compiles the kernels and captures the step's graphs: off
    # the loop, though nothing is served yet.
    engine_options = EngineOptions(
        max_sessions=options.max_sessions, step_products=options.step_products, pdl=options.pdl
    )
    engine = (await asyncio.to_thread(Engine, runtime, engine_options)).start()
    log.info("decode step: %s", engine.decode_path)
    log.info("%s", await asyncio.to_thread(turn_taking.warm_up))
    settle_collector()
    server = Server(engine, options)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port, ssl_context=_tls(options))
        try:
            await site.start()
        except OSError as exc:  # in use, or not this machine's address: the user's to fix
            where = f"{options.host}:{options.port}"
            raise ValueError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        ready(_url(options, runner.addresses[0][1]))
        hurry = await _until_signalled()
        await server.shut_down(options.shutdown_grace_s, hurry)
    finally:
        await runner.cleanup()
        await asyncio.to_thread(engine.stop)


def settle_collector() -> None:
    """Keep the garbage collector's full passes short once the server is up: what exists now
    (torch, the model, every module: about 300k objects) is frozen out of them. A full pass
    over it takes about 150 ms on a 2-core machine, holding the GIL: every call's audio and
    the decode steps stall together. Passes that still take long are logged."""
    gc.collect()
    gc.freeze()
    log.info("froze %d startup objects out of the garbage collector", gc.get_freeze_count())
    gc.callbacks.append(_time_collections)


_collection_began = 0.0


def _time_collections(phase: str, info: dict) -> None:
    global _collection_began
    if phase == "start":
        _collection_began = time.perf_counter()
        return
    took = time.perf_counter() - _collection_began
    if took >= SLOW_COLLECTION_S:
        log.warning("a garbage collection of generation %d took %.0f ms (%d collected)",
                    info["generation"], took * 1000, info["collected"])  # fmt: skip


async def _until_signalled() -> asyncio.Event:
    """Wait for SIGINT or SIGTERM; the event returned is set by a second one (stop now)."""
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (hurry if stop.is_set() else stop).set())
    await stop.wait()
    return hurry


def _tls(options: ServerOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.tls_cert, options.tls_key)
    return context


def _url(options: ServerOptions, port: int) -> str:
    scheme = "https" if options.tls_cert else "http"
    host = options.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    fragment = f"#token={options.token}" if options.token else ""
    return f"{scheme}://{host}:{port}/{fragment}"
