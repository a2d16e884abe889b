/*
 * callbox browser SDK: the TRTC Web SDK v4 call API over callbox's room
 * service (signaling protocol: docs/protocol.md). No build step: load
 * /trtc.js for the global `TRTC`, or import /trtc.mjs as an ES module.
 *
 * Topology, as the room service expects it: one sendonly uplink
 * RTCPeerConnection per publication and one recvonly downlink per
 * subscription, each negotiated with one complete (non-trickle) offer.
 */
(function (root) {
  'use strict';

  const VERSION = '0.1.0';
  const PROTOCOL_VERSION = 1;

  const ErrorCode = {
    INVALID_PARAMETER: 0x1000,
    INVALID_OPERATION: 0x1001,
    NOT_SUPPORTED: 0x1002,
    DEVICE_NOT_FOUND: 0x1003,
    INITIALIZE_FAILED: 0x1004,
    SIGNAL_CHANNEL_SETUP_FAILED: 0x4001,
    SIGNAL_CHANNEL_ERROR: 0x4002,
    ICE_TRANSPORT_ERROR: 0x4003,
    JOIN_ROOM_FAILED: 0x4004,
    CREATE_OFFER_FAILED: 0x4005,
    SIGNAL_CHANNEL_RECONNECTION_FAILED: 0x4006,
    UPLINK_RECONNECTION_FAILED: 0x4007,
    DOWNLINK_RECONNECTION_FAILED: 0x4008,
    REMOTE_STREAM_NOT_EXIST: 0x4010,
    CLIENT_BANNED: 0x4040,
    SERVER_TIMEOUT: 0x4041,
    SUBSCRIPTION_TIMEOUT: 0x4042,
    PLAY_NOT_ALLOWED: 0x4043,
    DEVICE_AUTO_RECOVER_FAILED: 0x4044,
    START_PUBLISH_CDN_FAILED: 0x4045,
    UNKNOWN: 0xffff,
  };

  class RtcError extends Error {
    constructor({ code, message, reason }) {
      super(message);
      this.name = 'RtcError';
      this.code = code;
      this.reason = reason;
    }
    getCode() {
      return this.code;
    }
  }

  const fail = (code, message, reason) => new RtcError({ code, message, reason });

  /** TRTC v4's network-quality event: grades 0-6, RTT in ms, loss in %. */
  function networkQuality(m) {
    const n = (v) => (Number.isFinite(v) ? v : 0);
    return {
      uplinkNetworkQuality: n(m.uplinkNetworkQuality),
      downlinkNetworkQuality: n(m.downlinkNetworkQuality),
      uplinkRTT: n(m.uplinkRTT),
      uplinkLoss: n(m.uplinkLoss),
      downlinkRTT: n(m.downlinkRTT),
      downlinkLoss: n(m.downlinkLoss),
    };
  }

  /** Minimal event emitter with the SDK's on/off. */
  class Emitter {
    constructor() {
      this._handlers = new Map();
    }
    on(event, handler) {
      if (!this._handlers.has(event)) this._handlers.set(event, new Set());
      this._handlers.get(event).add(handler);
    }
    off(event, handler) {
      const set = this._handlers.get(event);
      if (!set) return;
      if (handler === '*' || handler === undefined) set.clear();
      else set.delete(handler);
    }
    _emit(event, payload) {
      for (const h of [...(this._handlers.get(event) || [])]) {
        try {
          h(payload);
        } catch (e) {
          console.error(`TRTC: handler for '${event}' threw`, e);
        }
      }
    }
  }

  const VIDEO_PROFILES = {
    '120p': { width: 160, height: 120, frameRate: 15, bitrate: 200 },
    '180p': { width: 320, height: 180, frameRate: 15, bitrate: 350 },
    '240p': { width: 320, height: 240, frameRate: 15, bitrate: 400 },
    '360p': { width: 640, height: 360, frameRate: 15, bitrate: 800 },
    '480p': { width: 640, height: 480, frameRate: 15, bitrate: 900 },
    '720p': { width: 1280, height: 720, frameRate: 15, bitrate: 1500 },
    '1080p': { width: 1920, height: 1080, frameRate: 15, bitrate: 2000 },
  };

  /** Wait until ICE gathering is complete: offers are sent with all candidates. */
  function gathered(pc, timeoutMs = 10000) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState === 'complete') {
          pc.removeEventListener('icegatheringstatechange', done);
          resolve();
        }
      };
      pc.addEventListener('icegatheringstatechange', done);
      setTimeout(resolve, timeoutMs);
    });
  }

  /** Put H.264 constrained baseline (what the device decodes) first. */
  function preferH264(transceiver) {
    if (!transceiver.setCodecPreferences || !root.RTCRtpSender || !RTCRtpSender.getCapabilities) return;
    const caps = RTCRtpSender.getCapabilities('video');
    if (!caps) return;
    const isCB = (c) => /h264/i.test(c.mimeType) && /profile-level-id=42e01f/i.test(c.sdpFmtpLine || '');
    const h264 = (c) => /h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine || '');
    const sorted = [...caps.codecs.filter(isCB), ...caps.codecs.filter((c) => h264(c) && !isCB(c))];
    if (sorted.length) {
      try {
        transceiver.setCodecPreferences([...sorted, ...caps.codecs.filter((c) => /rtx|red|ulpfec/i.test(c.mimeType))]);
      } catch (e) {
        /* older browsers: the room service picks H.264 from the full offer */
      }
    }
  }

  // ---------------------------------------------------------------- streams

  class Stream extends Emitter {
    constructor(userId) {
      super();
      this._userId = userId;
      this._mediaStream = new MediaStream();
      this._div = null;
      this._video = null;
      this._audio = null;
      this._audioCtx = null;
      this._analyser = null;
      this._playOptions = {};
    }
    getUserId() {
      return this._userId;
    }
    getMediaStream() {
      return this._mediaStream;
    }
    getAudioTrack() {
      return this._mediaStream.getAudioTracks()[0] || null;
    }
    getVideoTrack() {
      return this._mediaStream.getVideoTracks()[0] || null;
    }
    hasAudio() {
      return !!this.getAudioTrack();
    }
    hasVideo() {
      return !!this.getVideoTrack();
    }
    isPlaying() {
      return !!this._div;
    }

    /** Create <video>/<audio> for this stream inside the element with id `elementId`. */
    async play(elementId, options = {}) {
      const host = typeof elementId === 'string' ? document.getElementById(elementId) : elementId;
      if (!host) throw fail(ErrorCode.INVALID_PARAMETER, `play: no element with id '${elementId}'`);
      if (this._div) this.stop();
      this._playOptions = { objectFit: 'cover', muted: false, ...options };
      const div = document.createElement('div');
      div.id = `player_${this.getId()}`;
      div.style.cssText = 'width:100%;height:100%;position:relative;overflow:hidden;background:#000';
      host.appendChild(div);
      this._div = div;
      this._attach();
      return this._startPlayback();
    }

    _attach() {
      if (!this._div) return;
      if (this.hasVideo() && !this._video) {
        const v = document.createElement('video');
        v.autoplay = true;
        v.playsInline = true;
        v.muted = true; // sound goes through the <audio> element
        v.style.cssText = `width:100%;height:100%;object-fit:${this._playOptions.objectFit}`;
        v.srcObject = new MediaStream([this.getVideoTrack()]);
        this._div.appendChild(v);
        this._video = v;
      }
      // The local stream's own sound is never played back (echo).
      if (this.hasAudio() && !this._audio && !this._isLocal) {
        const a = document.createElement('audio');
        a.autoplay = true;
        a.muted = !!this._playOptions.muted;
        a.srcObject = new MediaStream([this.getAudioTrack()]);
        this._div.appendChild(a);
        this._audio = a;
      }
    }

    async _startPlayback() {
      const els = [this._video, this._audio].filter(Boolean);
      const results = await Promise.allSettled(els.map((e) => e.play()));
      const refused = results.find((r) => r.status === 'rejected');
      if (refused) {
        const err = fail(ErrorCode.PLAY_NOT_ALLOWED, `autoplay refused: ${refused.reason && refused.reason.message}; call resume() after a user gesture`);
        this._emit('player-state-changed', { type: this._video ? 'video' : 'audio', state: 'PAUSED', reason: 'autoplay' });
        this._emit('error', err);
        return;
      }
      for (const el of els) {
        this._emit('player-state-changed', { type: el === this._video ? 'video' : 'audio', state: 'PLAYING', reason: 'playing' });
      }
    }

    /** Retry playback after the browser refused autoplay (call from a user gesture). */
    async resume() {
      const els = [this._video, this._audio].filter(Boolean);
      await Promise.all(els.map((e) => e.play()));
      for (const el of els) {
        this._emit('player-state-changed', { type: el === this._video ? 'video' : 'audio', state: 'PLAYING', reason: 'resume' });
      }
    }

    stop() {
      if (!this._div) return;
      for (const el of [this._video, this._audio]) {
        if (el) {
          el.pause();
          el.srcObject = null;
        }
      }
      this._div.remove();
      this._div = this._video = this._audio = null;
      this._emit('player-state-changed', { type: 'video', state: 'STOPPED', reason: 'stop' });
    }

    close() {
      this.stop();
      if (this._audioCtx) this._audioCtx.close().catch(() => {});
      this._audioCtx = this._analyser = null;
    }

    getVideoElement() {
      return this._video;
    }

    getAudioElement() {
      return this._audio;
    }

    /** Current audio level, 0..1 (RMS of the last few milliseconds). */
    getAudioLevel() {
      const track = this.getAudioTrack();
      if (!track) return 0;
      if (!this._analyser) {
        const Ctx = root.AudioContext || root.webkitAudioContext;
        if (!Ctx) return 0;
        this._audioCtx = new Ctx();
        const src = this._audioCtx.createMediaStreamSource(new MediaStream([track]));
        this._analyser = this._audioCtx.createAnalyser();
        this._analyser.fftSize = 2048;
        src.connect(this._analyser);
        this._levelBuf = new Float32Array(this._analyser.fftSize);
      }
      this._analyser.getFloatTimeDomainData(this._levelBuf);
      let sum = 0;
      for (const s of this._levelBuf) sum += s * s;
      return Math.sqrt(sum / this._levelBuf.length);
    }

    // A remote stream's mute only silences it here; a local stream's
    // (LocalStream._mute) also tells the room.
    _mute(kind, muted) {
      return this._setTrackEnabled(kind, !muted);
    }
    muteAudio() {
      return this._mute('audio', true);
    }
    unmuteAudio() {
      return this._mute('audio', false);
    }
    muteVideo() {
      return this._mute('video', true);
    }
    unmuteVideo() {
      return this._mute('video', false);
    }

    _setTrackEnabled(kind, enabled) {
      const tracks = kind === 'audio' ? this._mediaStream.getAudioTracks() : this._mediaStream.getVideoTracks();
      if (!tracks.length) return false;
      tracks.forEach((t) => (t.enabled = enabled));
      return true;
    }
  }

  class LocalStream extends Stream {
    constructor({ userId, audio = true, video = true, cameraId, microphoneId, audioSource, videoSource }) {
      super(userId);
      this._isLocal = true;
      this._wantAudio = !!audio || !!audioSource;
      this._wantVideo = !!video || !!videoSource;
      this._cameraId = cameraId;
      this._microphoneId = microphoneId;
      this._audioSource = audioSource;
      this._videoSource = videoSource;
      this._profile = VIDEO_PROFILES['480p'];
      this._client = null;
      this._id = `local_${userId}_${Math.random().toString(36).slice(2, 10)}`;
    }
    getId() {
      return this._id;
    }

    setVideoProfile(profile) {
      const p = typeof profile === 'string' ? VIDEO_PROFILES[profile] : profile;
      if (!p || !p.width || !p.height) throw fail(ErrorCode.INVALID_PARAMETER, `unknown video profile ${JSON.stringify(profile)}`);
      this._profile = { ...VIDEO_PROFILES['480p'], ...p };
      const t = this.getVideoTrack();
      if (t) {
        return t.applyConstraints({ width: this._profile.width, height: this._profile.height, frameRate: this._profile.frameRate });
      }
      return Promise.resolve();
    }

    /** Open the camera and microphone. */
    async initialize() {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw fail(ErrorCode.NOT_SUPPORTED, 'getUserMedia is unavailable (needs https:// or http://localhost)');
      }
      const tracks = [];
      if (this._audioSource) tracks.push(this._audioSource);
      if (this._videoSource) tracks.push(this._videoSource);
      const constraints = {
        audio: this._wantAudio && !this._audioSource ? (this._microphoneId ? { deviceId: { exact: this._microphoneId } } : true) : false,
        video:
          this._wantVideo && !this._videoSource
            ? {
                width: this._profile.width,
                height: this._profile.height,
                frameRate: this._profile.frameRate,
                ...(this._cameraId ? { deviceId: { exact: this._cameraId } } : {}),
              }
            : false,
      };
      if (constraints.audio || constraints.video) {
        let ms;
        try {
          ms = await navigator.mediaDevices.getUserMedia(constraints);
        } catch (e) {
          const code = e && e.name === 'NotFoundError' ? ErrorCode.DEVICE_NOT_FOUND : ErrorCode.INITIALIZE_FAILED;
          throw fail(code, `cannot open camera/microphone: ${e && e.name}: ${e && e.message}`, e && e.name);
        }
        tracks.push(...ms.getTracks());
      }
      tracks.forEach((t) => this._mediaStream.addTrack(t));
      this._attach();
    }

    close() {
      super.close();
      this._mediaStream.getTracks().forEach((t) => t.stop());
    }

    async _mute(kind, muted) {
      if (!this._setTrackEnabled(kind, !muted)) return false;
      if (this._client) await this._client._sendMute(kind, muted);
      return true;
    }
  }

  class RemoteStream extends Stream {
    constructor(info) {
      super(info.userId);
      this._info = info;
      this._pc = null;
      this._subscribed = false;
    }
    getId() {
      return this._info.streamId;
    }
    getType() {
      return 'main';
    }
    hasAudio() {
      return this._info.audio;
    }
    hasVideo() {
      return this._info.video;
    }
  }

  // ---------------------------------------------------------------- client

  const State = { DISCONNECTED: 'DISCONNECTED', CONNECTING: 'CONNECTING', RECONNECTING: 'RECONNECTING', CONNECTED: 'CONNECTED' };

  function defaultUrl() {
    const loc = root.location;
    if (!loc || !/^https?:$/.test(loc.protocol)) return null;
    return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
  }

  class Client extends Emitter {
    constructor({ mode = 'rtc', sdkAppId, userId, userSig, signalUrl, iceServers } = {}) {
      super();
      if (!sdkAppId || !userId || !userSig) {
        throw fail(ErrorCode.INVALID_PARAMETER, 'createClient needs sdkAppId, userId and userSig');
      }
      this._mode = mode;
      this._sdkAppId = Number(sdkAppId);
      this._userId = String(userId);
      this._userSig = String(userSig);
      this._url = signalUrl || defaultUrl();
      this._iceServers = iceServers || [];
      this._turnServers = []; // setTurnServer()
      this._roomIceServers = []; // the room's TURN, with credentials from the join reply
      this._ws = null;
      this._nextId = 1;
      this._pending = new Map();
      this._state = State.DISCONNECTED;
      this._room = null; // {roomId} | {strRoomId}
      this._local = null;
      this._uplink = null;
      this._remotes = new Map(); // streamId -> RemoteStream
      // Bumped by every media teardown (leave, ban, reconnect): a publish or
      // subscribe that was negotiating across one must not install its
      // connection afterwards, or a banned page would keep playing.
      this._mediaEpoch = 0;
      this._mutedState = new Map(); // userId -> {audioMuted, videoMuted, hasAudio, hasVideo}
      this._destroyed = false;
      this._reconnectTimer = null;
    }

    _setState(state) {
      if (state === this._state) return;
      const prevState = this._state;
      this._state = state;
      this._emit('connection-state-changed', { prevState, state });
    }

    _connect() {
      if (!this._url) return Promise.reject(fail(ErrorCode.SIGNAL_CHANNEL_SETUP_FAILED, 'no signaling URL: pass signalUrl to createClient'));
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = new WebSocket(this._url);
        } catch (e) {
          reject(fail(ErrorCode.SIGNAL_CHANNEL_SETUP_FAILED, `cannot open ${this._url}: ${e.message}`));
          return;
        }
        const timer = setTimeout(() => {
          ws.close();
          reject(fail(ErrorCode.SIGNAL_CHANNEL_SETUP_FAILED, `no answer from ${this._url}`));
        }, 10000);
        ws.onopen = () => {
          clearTimeout(timer);
          this._ws = ws;
          resolve();
        };
        ws.onerror = () => {
          clearTimeout(timer);
          if (this._ws !== ws) reject(fail(ErrorCode.SIGNAL_CHANNEL_SETUP_FAILED, `cannot connect to ${this._url}`));
        };
        ws.onmessage = (m) => this._onMessage(m.data);
        ws.onclose = () => {
          if (this._ws === ws) this._onClose();
        };
      });
    }

    _request(body, timeoutMs = 15000) {
      if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
        return Promise.reject(fail(ErrorCode.SIGNAL_CHANNEL_ERROR, 'signaling is not connected'));
      }
      const id = this._nextId++;
      this._ws.send(JSON.stringify({ ...body, id }));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this._pending.delete(id);
          reject(fail(ErrorCode.SERVER_TIMEOUT, `no reply to ${body.type}`));
        }, timeoutMs);
        this._pending.set(id, { resolve, reject, timer });
      });
    }

    _onMessage(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        console.error('TRTC: malformed message from the room service', text);
        return;
      }
      if (msg.id !== undefined && this._pending.has(msg.id)) {
        const p = this._pending.get(msg.id);
        this._pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.type === 'error') p.reject(fail(msg.code, msg.message, msg.reason));
        else p.resolve(msg);
        return;
      }
      this._onEvent(msg);
    }

    _onEvent(msg) {
      switch (msg.type) {
        case 'peer-join':
          this._emit('peer-join', { userId: msg.userId });
          break;
        case 'peer-leave':
          this._emit('peer-leave', { userId: msg.userId });
          break;
        case 'stream-added':
          this._addRemote(msg.stream, true);
          break;
        case 'stream-removed': {
          const s = this._remotes.get(msg.streamId);
          this._remotes.delete(msg.streamId);
          this._mutedState.delete(msg.userId);
          if (s) {
            this._closeDownlink(s);
            s.stop();
            this._emit('stream-removed', { stream: s });
          }
          break;
        }
        case 'stream-updated': {
          const s = this._remotes.get(msg.stream.streamId);
          this._trackMuted(msg.stream);
          if (s) {
            s._info = msg.stream;
            this._emit('stream-updated', { stream: s });
          }
          break;
        }
        case 'mute-audio':
        case 'unmute-audio':
        case 'mute-video':
        case 'unmute-video':
          this._emit(msg.type, { userId: msg.userId });
          break;
        case 'client-banned':
          this._room = null;
          this._teardownMedia();
          this._emit('client-banned', fail(ErrorCode.CLIENT_BANNED, msg.message, msg.reason));
          break;
        case 'network-quality':
          this._emit('network-quality', networkQuality(msg));
          break;
        case 'error':
          this._emit('error', fail(msg.code, msg.message, msg.reason));
          break;
        default:
          break;
      }
    }

    _trackMuted(info) {
      this._mutedState.set(info.userId, {
        userId: info.userId,
        hasAudio: info.audio,
        hasVideo: info.video,
        audioMuted: info.audioMuted,
        videoMuted: info.videoMuted,
      });
    }

    _addRemote(info, announce) {
      let s = this._remotes.get(info.streamId);
      if (!s) {
        s = new RemoteStream(info);
        this._remotes.set(info.streamId, s);
      }
      this._trackMuted(info);
      if (announce) this._emit('stream-added', { stream: s });
      return s;
    }

    _onClose() {
      this._ws = null;
      for (const [, p] of this._pending) {
        clearTimeout(p.timer);
        p.reject(fail(ErrorCode.SIGNAL_CHANNEL_ERROR, 'signaling closed'));
      }
      this._pending.clear();
      if (this._room && !this._destroyed) {
        this._setState(State.RECONNECTING);
        // TRTC reports a lost connection as quality 6 (down) both ways.
        this._emit('network-quality', networkQuality({ uplinkNetworkQuality: 6, downlinkNetworkQuality: 6 }));
        this._reconnect(1);
      } else {
        this._setState(State.DISCONNECTED);
      }
    }

    /** Reconnect signaling, rejoin, republish, resubscribe; backoff 1 s doubling to 8 s, 10 tries. */
    _reconnect(attempt) {
      if (attempt > 10) {
        this._room = null;
        this._teardownMedia();
        this._setState(State.DISCONNECTED);
        this._emit('error', fail(ErrorCode.SIGNAL_CHANNEL_RECONNECTION_FAILED, 'could not reconnect to the room service'));
        return;
      }
      const delay = Math.min(8000, 1000 * 2 ** (attempt - 1));
      this._reconnectTimer = setTimeout(async () => {
        if (!this._room || this._destroyed) return;
        try {
          await this._connect();
          const subscribed = [...this._remotes.values()].filter((s) => s._subscribed).map((s) => s.getId());
          this._teardownMedia();
          const reply = await this._sendJoin();
          this._roomIceServers = reply.iceServers || [];
          this._setState(State.CONNECTED);
          for (const info of reply.streams || []) {
            const s = this._addRemote(info, false);
            if (subscribed.includes(info.streamId)) this.subscribe(s).catch((e) => this._emit('error', e));
            else this._emit('stream-added', { stream: s });
          }
          if (this._local) {
            const local = this._local;
            this._local = null;
            await this.publish(local);
          }
        } catch (e) {
          if (this._ws) this._ws.close();
          this._reconnect(attempt + 1);
        }
      }, delay);
    }

    _sendJoin() {
      return this._request({
        type: 'join',
        version: PROTOCOL_VERSION,
        sdkAppId: this._sdkAppId,
        userId: this._userId,
        userSig: this._userSig,
        ...this._room,
        ...(this._privateMapKey ? { privateMapKey: this._privateMapKey } : {}),
      });
    }

    /**
     * Join `{roomId}` (number) or `{strRoomId}` (string, with useStringRoomId);
     * `privateMapKey` is TRTC's room-scoped key, where the app requires one.
     */
    async join({ roomId, strRoomId, useStringRoomId, privateMapKey } = {}) {
      if (this._destroyed) throw fail(ErrorCode.INVALID_OPERATION, 'client was destroyed');
      if (this._room) throw fail(ErrorCode.INVALID_OPERATION, 'already in a room');
      let room;
      if (strRoomId !== undefined) room = { strRoomId: String(strRoomId) };
      else if (useStringRoomId) room = { strRoomId: String(roomId) };
      else if (Number.isInteger(roomId)) room = { roomId };
      else throw fail(ErrorCode.INVALID_PARAMETER, `roomId must be an integer, got ${JSON.stringify(roomId)} (use strRoomId for strings)`);
      this._setState(State.CONNECTING);
      try {
        if (!this._ws) await this._connect();
        this._room = room;
        this._privateMapKey = privateMapKey ? String(privateMapKey) : null;
        const reply = await this._sendJoin();
        this._roomIceServers = reply.iceServers || [];
        this._setState(State.CONNECTED);
        for (const info of reply.streams || []) this._addRemote(info, true);
      } catch (e) {
        this._room = null;
        if (this._state !== State.CONNECTED) this._setState(this._ws ? State.CONNECTED : State.DISCONNECTED);
        throw e instanceof RtcError ? e : fail(ErrorCode.JOIN_ROOM_FAILED, String(e && e.message));
      }
    }

    /**
     * TRTC's `setTurnServer`: one `{url, username, credential}` (or a list)
     * used for the connections made from now on, beside the room's own.
     * `iceTransportPolicy: 'relay'` on an entry forces every call through TURN.
     */
    setTurnServer(config) {
      const list = Array.isArray(config) ? config : [config];
      if (!list.every((c) => c && (c.url || c.urls))) {
        throw fail(ErrorCode.INVALID_PARAMETER, 'setTurnServer takes {url, username, credential}');
      }
      this._turnServers = list.map((c) => ({ urls: c.urls || c.url, username: c.username, credential: c.credential }));
      this._relayOnly = list.some((c) => c.iceTransportPolicy === 'relay');
    }

    _peerConfig() {
      return {
        iceServers: [...this._iceServers, ...this._turnServers, ...this._roomIceServers],
        iceTransportPolicy: this._relayOnly ? 'relay' : 'all',
        bundlePolicy: 'max-bundle',
      };
    }

    _newPeer() {
      return new RTCPeerConnection(this._peerConfig());
    }

    async publish(stream) {
      if (!this._room) throw fail(ErrorCode.INVALID_OPERATION, 'join a room before publishing');
      if (!(stream instanceof LocalStream)) throw fail(ErrorCode.INVALID_PARAMETER, 'publish takes a LocalStream');
      if (this._local) throw fail(ErrorCode.INVALID_OPERATION, 'already publishing');
      const audio = stream.getAudioTrack();
      const video = stream.getVideoTrack();
      if (!audio && !video) throw fail(ErrorCode.INVALID_OPERATION, 'the stream has no tracks: call initialize() first');
      const pc = this._newPeer();
      if (audio) pc.addTransceiver(audio, { direction: 'sendonly', streams: [stream.getMediaStream()] });
      if (video) preferH264(pc.addTransceiver(video, { direction: 'sendonly', streams: [stream.getMediaStream()] }));
      const epoch = this._mediaEpoch;
      const current = () => {
        if (this._mediaEpoch !== epoch) throw fail(ErrorCode.INVALID_OPERATION, 'left the room while publishing');
      };
      try {
        await pc.setLocalDescription(await pc.createOffer());
        await gathered(pc);
        current();
        const reply = await this._request({ type: 'publish', sdp: pc.localDescription.sdp, audio: !!audio, video: !!video });
        current();
        await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
        current();
      } catch (e) {
        pc.close();
        throw e instanceof RtcError ? e : fail(ErrorCode.CREATE_OFFER_FAILED, `publish: ${e.message}`);
      }
      this._uplink = pc;
      this._local = stream;
      stream._client = this;
      // Tell the room about tracks muted before publishing.
      if (audio && !audio.enabled) await this._sendMute('audio', true);
      if (video && !video.enabled) await this._sendMute('video', true);
    }

    async unpublish(stream) {
      if (!this._local || (stream && stream !== this._local)) throw fail(ErrorCode.INVALID_OPERATION, 'this stream is not published');
      this._local._client = null;
      this._local = null;
      if (this._uplink) this._uplink.close();
      this._uplink = null;
      await this._request({ type: 'unpublish' });
    }

    async _sendMute(kind, muted) {
      if (this._local && this._room) await this._request({ type: 'mute', kind, muted });
    }

    /** Subscribe to a remote stream; 'stream-subscribed' follows. */
    async subscribe(stream, options = { audio: true, video: true }) {
      if (!this._room) throw fail(ErrorCode.INVALID_OPERATION, 'join a room before subscribing');
      if (!(stream instanceof RemoteStream) || !this._remotes.has(stream.getId())) {
        throw fail(ErrorCode.REMOTE_STREAM_NOT_EXIST, 'no such remote stream');
      }
      const want = { audio: options.audio !== false, video: options.video !== false };
      if (!want.audio && !want.video) throw fail(ErrorCode.INVALID_PARAMETER, 'subscribe to audio, video or both');
      const pc = this._newPeer();
      // Offer only what is wanted: a privateMapKey may grant receiving one kind only.
      if (want.audio) pc.addTransceiver('audio', { direction: 'recvonly' });
      if (want.video) preferH264(pc.addTransceiver('video', { direction: 'recvonly' }));
      const ms = new MediaStream();
      pc.ontrack = (e) => {
        if ((e.track.kind === 'audio' && want.audio) || (e.track.kind === 'video' && want.video)) ms.addTrack(e.track);
      };
      const epoch = this._mediaEpoch;
      const gone = () => this._mediaEpoch !== epoch || this._remotes.get(stream.getId()) !== stream;
      const current = () => {
        if (gone()) throw fail(ErrorCode.REMOTE_STREAM_NOT_EXIST, 'the stream went away while subscribing');
      };
      try {
        await pc.setLocalDescription(await pc.createOffer());
        await gathered(pc);
        current();
        const reply = await this._request({ type: 'subscribe', streamId: stream.getId(), sdp: pc.localDescription.sdp });
        current();
        await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
        current();
      } catch (e) {
        pc.close();
        const err = e instanceof RtcError ? e : fail(ErrorCode.SUBSCRIPTION_TIMEOUT, `subscribe: ${e.message}`);
        // A stream that went away, or a client pushed out, has its own event
        // (stream-removed, client-banned); 'error' is for what nothing else tells.
        if (!gone()) this._emit('error', err);
        throw err;
      }
      this._closeDownlink(stream);
      stream._pc = pc;
      stream._mediaStream = ms;
      stream._subscribed = true;
      stream._video = stream._audio = null;
      if (stream._div) stream._attach();
      this._emit('stream-subscribed', { stream });
    }

    _closeDownlink(stream) {
      if (stream._pc) stream._pc.close();
      stream._pc = null;
      stream._subscribed = false;
    }

    async unsubscribe(stream) {
      if (!stream || !stream._subscribed) throw fail(ErrorCode.INVALID_OPERATION, 'not subscribed to this stream');
      this._closeDownlink(stream);
      stream.stop();
      await this._request({ type: 'unsubscribe', streamId: stream.getId() });
    }

    _teardownMedia() {
      this._mediaEpoch++;
      if (this._uplink) this._uplink.close();
      this._uplink = null;
      for (const s of this._remotes.values()) {
        this._closeDownlink(s);
        s.stop();
      }
      this._remotes.clear();
      this._mutedState.clear();
    }

    async leave() {
      if (!this._room) return;
      this._room = null;
      if (this._local) this._local._client = null;
      this._local = null;
      this._teardownMedia();
      try {
        await this._request({ type: 'leave' });
      } catch (e) {
        /* leaving anyway: the room drops us when the socket goes */
      }
    }

    destroy() {
      this._destroyed = true;
      clearTimeout(this._reconnectTimer);
      this._room = null;
      this._teardownMedia();
      if (this._ws) {
        const ws = this._ws;
        this._ws = null;
        ws.close();
      }
      this._setState(State.DISCONNECTED);
    }

    getRemoteMutedState() {
      return [...this._mutedState.values()];
    }

    async _stats(pc, pick) {
      if (!pc) return [];
      const report = await pc.getStats();
      const out = [];
      report.forEach((r) => {
        const v = pick(r, report);
        if (v) out.push(v);
      });
      return out;
    }

    /** {rtt} in ms, from the uplink (or the first downlink). */
    async getTransportStats() {
      const pc = this._uplink || [...this._remotes.values()].map((s) => s._pc).find(Boolean);
      const pairs = await this._stats(pc, (r) => r.type === 'candidate-pair' && r.nominated && r);
      const pair = pairs[0];
      let local = null;
      let remote = null;
      let path = null; // which way media goes: candidate type and protocol
      if (pair && pc) {
        const report = await pc.getStats();
        const l = report.get(pair.localCandidateId);
        const r = report.get(pair.remoteCandidateId);
        local = l ? `${l.address || l.ip}:${l.port}` : null;
        remote = r ? `${r.address || r.ip}:${r.port}` : null;
        path = l ? `${l.candidateType}/${l.protocol}` : null;
      }
      return { rtt: pair && pair.currentRoundTripTime !== undefined ? Math.round(pair.currentRoundTripTime * 1000) : 0, localCandidate: local, remoteCandidate: remote, path };
    }

    async getLocalAudioStats() {
      const out = {};
      const s = await this._stats(this._uplink, (r) => r.type === 'outbound-rtp' && r.kind === 'audio' && r);
      if (s[0]) out[this._userId] = { bytesSent: s[0].bytesSent, packetsSent: s[0].packetsSent };
      return out;
    }

    async getLocalVideoStats() {
      const out = {};
      const s = await this._stats(this._uplink, (r) => r.type === 'outbound-rtp' && r.kind === 'video' && r);
      if (s[0]) {
        out[this._userId] = {
          bytesSent: s[0].bytesSent,
          packetsSent: s[0].packetsSent,
          framesEncoded: s[0].framesEncoded,
          frameWidth: s[0].frameWidth,
          frameHeight: s[0].frameHeight,
          framesSent: s[0].framesSent,
        };
      }
      return out;
    }

    async _remoteStats(kind, map) {
      const out = {};
      for (const s of this._remotes.values()) {
        const r = await this._stats(s._pc, (x) => x.type === 'inbound-rtp' && x.kind === kind && x);
        if (r[0]) out[s.getUserId()] = map(r[0]);
      }
      return out;
    }

    getRemoteAudioStats() {
      return this._remoteStats('audio', (r) => ({
        bytesReceived: r.bytesReceived,
        packetsReceived: r.packetsReceived,
        packetsLost: r.packetsLost,
        audioLevel: r.audioLevel,
        totalAudioEnergy: r.totalAudioEnergy,
      }));
    }

    getRemoteVideoStats() {
      return this._remoteStats('video', (r) => ({
        bytesReceived: r.bytesReceived,
        packetsReceived: r.packetsReceived,
        packetsLost: r.packetsLost,
        framesDecoded: r.framesDecoded,
        frameWidth: r.frameWidth,
        frameHeight: r.frameHeight,
      }));
    }
  }

  // ---------------------------------------------------------------- TRTC

  async function listDevices(kind) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
    return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === kind);
  }

  const TRTC = {
    VERSION,
    ErrorCode,
    RtcError,
    createClient(options) {
      return new Client(options);
    },
    createStream(options = {}) {
      if (!options.userId) throw fail(ErrorCode.INVALID_PARAMETER, 'createStream needs userId');
      return new LocalStream(options);
    },
    async checkSystemRequirements() {
      const webrtc = typeof RTCPeerConnection !== 'undefined';
      const media = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
      let h264 = false;
      if (webrtc && RTCRtpSender.getCapabilities) {
        const caps = RTCRtpSender.getCapabilities('video');
        h264 = !!(caps && caps.codecs.some((c) => /h264/i.test(c.mimeType)));
      }
      return {
        result: webrtc && media && h264,
        detail: { isBrowserSupported: webrtc, isWebRTCSupported: webrtc, isMediaDevicesSupported: media, isH264Supported: h264 },
      };
    },
    getCameras: () => listDevices('videoinput'),
    getMicrophones: () => listDevices('audioinput'),
    getSpeakers: () => listDevices('audiooutput'),
    Logger: { setLogLevel() {}, enableUploadLog() {}, disableUploadLog() {} },
  };

  if (typeof module === 'object' && module.exports) module.exports = TRTC;
  else root.TRTC = TRTC;
})(typeof window !== 'undefined' ? window : globalThis);
