// The browser side of a call: mic -> WebRTC -> server; server audio -> <audio>; JSON events on
// the "events" data channel drive the transcript, the state indicator and the latency readout.
// Protocol: PROTOCOL.md. No build step: plain ES2020.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const MIC = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

let pc = null;
let channel = null;
let mic = null;
let agentLine = null; // the transcript line of the answer being spoken
const userLines = new Map(); // the caller's turn -> its line, until its transcript is done

// For tests and the curious: every event received, and the live peer connection.
window.realtime = { events: [], peer: () => pc };

$("connect").onclick = () => (pc ? hangUp() : connect().catch(fail));
$("interrupt").onclick = () => send({ type: "interrupt" });
$("vad").onchange = () => send({ type: "settings", vad_aggressiveness: Number($("vad").value) });
$("history").onchange = () => send({ type: "settings", history: $("history").checked });
$("speech-detector").onchange = () => send({ type: "settings", vad: $("speech-detector").value });
$("end-of-turn").onchange = () => send({ type: "settings", end_of_turn: $("end-of-turn").value });
$("max-answer").onchange = () => {
  const seconds = Number($("max-answer").value);
  if (seconds > 0) send({ type: "settings", max_answer_ms: Math.round(seconds * 1000) });
};

async function connect() {
  if (!navigator.mediaDevices) {
    throw new Error("the microphone needs https (or localhost): start the server with --tls-cert/--tls-key");
  }
  showError(null);
  setState("thinking", "connecting…");
  $("connect").textContent = "Hang up";
  mic = await navigator.mediaDevices.getUserMedia({ audio: MIC });
  pc = new RTCPeerConnection();
  mic.getTracks().forEach((track) => pc.addTrack(track, mic));
  pc.ontrack = (e) => { $("speaker").srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    if (["failed", "closed"].includes(pc?.connectionState)) hangUp(`connection ${pc.connectionState}`);
  };
  channel = pc.createDataChannel("events");
  channel.onmessage = (e) => onEvent(JSON.parse(e.data));
  const events = channel;
  channel.onclose = () => { if (channel === events) hangUp("the server hung up"); };
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  const answer = await postOffer(pc.localDescription.sdp);
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
}

function gatheringComplete(peer) {
  // Our server takes the whole offer at once (no trickle ICE): wait for every candidate.
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") resolve();
    });
  });
}

async function postOffer(sdp) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch("offer", { method: "POST", headers, body: JSON.stringify({ type: "offer", sdp }) });
  const reply = await response.json();
  if (!response.ok) throw new Error(reply.error?.message || `HTTP ${response.status}`);
  return reply;
}

function hangUp(reason) {
  mic?.getTracks().forEach((track) => track.stop());
  pc?.close();
  pc = channel = mic = null;
  $("connect").textContent = "Connect";
  $("interrupt").disabled = true;
  setState("idle", "not connected");
  if (reason) note(reason);
}

function showSettings(settings) {
  $("speech-detector").value = settings.vad;
  $("end-of-turn").value = settings.end_of_turn;
}

function send(message) {
  if (channel?.readyState === "open") channel.send(JSON.stringify(message));
}

const handlers = {
  "session.ready": (e) => {
    setState("listening", "listening");
    $("vad").value = String(e.settings.vad_aggressiveness);
    $("history").checked = e.settings.history;
    showSettings(e.settings);
    note("connected: speak whenever you like");
  },
  "speech.started": (e) => {
    setState("user", "hearing you");
    // continues: so soon after the last turn that both are answered as one
    userLines.set(e.turn, addLine("user", e.continues ? "(you went on)" : "(you spoke)"));
  },
  // The caller's words, where the server transcribes them (serve --transcribe).
  "speech.transcript.delta": (e) => {
    const line = userLines.get(e.turn);
    if (!line) return;
    if (!line.classList.contains("heard")) line.textContent = "";
    line.classList.add("heard");
    line.textContent += e.text;
  },
  "speech.transcript.done": (e) => {
    const line = userLines.get(e.turn);
    if (line) line.textContent = e.text || "(you spoke)";
    userLines.delete(e.turn);
  },
  "speech.transcript.failed": (e) => userLines.delete(e.turn),
  "speech.stopped": () => { setState("thinking", "thinking"); $("interrupt").disabled = false; },
  "response.started": () => {
    $("speaker").muted = false;
    setState("speaking", "speaking");
    $("interrupt").disabled = false;
    agentLine = addLine("agent", "");
  },
  "response.text.delta": (e) => { if (agentLine) agentLine.textContent += e.text; },
  "response.done": () => endAnswer(),
  "response.interrupted": (e) => {
    // Drop whatever is still in the playback buffer: it would play over the caller.
    $("speaker").muted = true;
    agentLine?.classList.add("interrupted");
    endAnswer(`stopped after ${(e.played_ms / 1000).toFixed(1)} s`);
  },
  "turn.latency": (e) => {
    $("lat-eot").textContent = ms(e.end_of_turn_ms);
    $("lat-text").textContent = ms(e.first_text_ms);
    $("lat-audio").textContent = ms(e.first_audio_ms);
  },
  // What the server applied: a detector whose model cannot load is replaced, and shown so.
  "settings.updated": (e) => showSettings(e.settings),
  "history.forgotten": (e) => note(`the agent's memory was full: it forgot turn${e.turns.length > 1 ? "s" : ""} ${e.turns.join(", ")}`),
  // The server ends the call (shutting down, idle or too long, or its engine is down).
  "session.closing": (e) => hangUp(`the server ended the call: ${e.message}`),
  "error": (e) => showError(e.error.message),
};

function onEvent(event) {
  window.realtime.events.push(event);
  handlers[event.type]?.(event);
}

function endAnswer(why) {
  if (agentLine && !agentLine.textContent) agentLine.textContent = "(spoke)";
  agentLine = null;
  $("interrupt").disabled = true;
  if (pc) setState("listening", "listening");
  if (why) note(why);
}

function addLine(kind, text) {
  const line = document.createElement("div");
  line.className = `line ${kind}`;
  line.textContent = text;
  $("transcript").append(line);
  line.scrollIntoView({ block: "end" });
  return line;
}

const note = (text) => addLine("note", text);
const ms = (value) => (value == null ? "–" : `${Math.round(value)} ms`);

function setState(kind, text) {
  $("state").className = `state ${kind}`;
  $("state-text").textContent = text;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function fail(error) {
  hangUp();
  showError(error.message || String(error));
}
