//! The scenarios, one method each, each returning its report line.

use super::*;

/// The microphone's tone, played into the loopback for the rest of the run.
const MIC_LOOP: &str = "(while true; do aplay -q -D hw:Loopback,0,0 /share/mic.wav; done) > /dev/null 2>&1 & echo $! > /run/mic-loop.pid";

/// The echo scenario's path: what the speaker plays comes back into the
/// microphone 80 ms later, 6 dB down, with the near end's tone.
const ECHO_PATH_MS: f64 = 80.0;
const ECHO_LOOP: &str = "callbox audio loop --from hw:Loopback,1,1 --to hw:Loopback,0,0 --delay-ms 80 --gain-db -6 --near /share/near.wav > /share/loop.log 2>&1 & echo $! > /run/echo-loop.pid";

/// Everything a scenario needs.
pub(crate) struct Rig {
    pub(crate) arch: Arch,
    pub(crate) guest: Guest,
    pub(crate) viewer: Option<Viewer>,
    pub(crate) size: (usize, usize),
}

impl Rig {
    /// Stop the daemon and see its stream leave the room.
    async fn stop_device(&mut self) -> Result<()> {
        self.guest.ok("hil-device stop").await?;
        self.viewer()?.expect_device_gone(10).await
    }

    /// Start the daemon as `config` provisions it, and wait until it is in the call.
    async fn start_device(&mut self, config: &str) -> Result<()> {
        self.guest.ok(&format!("hil-device start {config}")).await?;
        self.guest.wait_state("in-call", 30).await?;
        Ok(())
    }

    pub(crate) fn viewer(&mut self) -> Result<&mut Viewer> {
        self.viewer
            .as_mut()
            .ok_or_else(|| anyhow!("no subscriber (scenario 2 failed)"))
    }

    /// Scenario 1: the daemon joins by itself at boot; LED_CALL lit.
    pub(crate) async fn auto_join(&mut self) -> Result<String> {
        let (waited, s) = self
            .guest
            .wait_status("state in-call", 60, |s| s["state"] == "in-call")
            .await?;
        let leds = self.guest.leds().await?;
        ensure!(
            leds == (1, 0),
            "LED_CALL, LED_BANNED = {leds:?}, want (1, 0)"
        );
        // The daemon's own clock: how long after its start it entered the call.
        let joined_at = s["uptime_s"].as_f64().unwrap_or(f64::NAN)
            - s["in_state_s"].as_f64().unwrap_or(f64::NAN);
        // The first packet goes out just after the call is up.
        let (_, s) = self
            .guest
            .wait_status("first RTP sent", 5, |s| {
                s["media"]["first_rtp_ms"].is_number()
            })
            .await?;
        Ok(format!(
            "in call {joined_at:.2} s after the daemon started (seen {:.2} s after the guest was up), LED_CALL=1 LED_BANNED=0, first RTP {} ms after daemon start",
            waited.as_secs_f64(),
            s["media"]["first_rtp_ms"]
        ))
    }

    /// Scenario 2: the host subscriber decodes vivid's picture and the
    /// microphone's 440 Hz.
    pub(crate) async fn subscriber_decodes(&mut self) -> Result<String> {
        // The microphone: a tone played into the loopback, for the rest of the run.
        self.guest.ok(MIC_LOOP).await?;
        let t = Instant::now();
        let mut viewer = Viewer::join(self.guest.http).await?;
        viewer.subscribe_device(10).await?;
        let subscribed = t.elapsed();
        // Let the tone reach the encoder before listening.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = viewer.receive(4.0).await?;
        self.viewer = Some(viewer);
        let video = ensure_video(&got, self.size, 20, 4.0)?;
        let f = audio_frequency(&got)?;
        ensure!(
            (f - MIC_HZ).abs() <= 5.0,
            "audio decodes to {f:.1} Hz, want {MIC_HZ}"
        );
        let media = &self.guest.status().await?["media"];
        Ok(format!(
            "subscribed in {:.2} s; {video}; audio {} packets, tone {f:.1} Hz; daemon encode p50 {} ms p99 {} ms, {} capture xruns",
            subscribed.as_secs_f64(),
            got.audio_payloads.len(),
            media["encode_ms_p50"],
            media["encode_ms_p99"],
            media["capture_xruns"]
        ))
    }

    /// Scenario 3: the subscriber's tone comes out of the daemon's speaker.
    pub(crate) async fn speaker_plays(&mut self) -> Result<String> {
        let viewer = self.viewer()?;
        let local = viewer.client.publish(true, false).await?;
        let track = local
            .audio()
            .cloned()
            .ok_or_else(|| anyhow!("no audio track"))?;
        let mut enc = OpusEncoder::new(32_000)?;
        let mut t = tone::Tone::new(SPEAKER_HZ, SAMPLE_RATE, 0.3);
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let mut tick = tokio::time::interval(FRAME);
        for i in 0..300 {
            tick.tick().await;
            t.fill(&mut frame);
            let packet = Bytes::copy_from_slice(enc.encode(&frame)?);
            track.write(packet, FRAME).await?;
            // Record the speaker once the daemon has had a second to subscribe.
            if i == 50 {
                self.guest
                    .ok("arecord -q -D hw:Loopback,1,1 -f S16_LE -r 48000 -c 1 -d 3 /share/speaker.wav > /share/arecord.log 2>&1 &")
                    .await?;
            }
        }
        let viewer = self.viewer()?;
        viewer.client.unpublish().await?;
        self.guest
            .ok("while pidof arecord > /dev/null; do sleep 0.1; done")
            .await?;
        let wav = self.guest.share().join("speaker.wav");
        let samples: Vec<i16> = hound::WavReader::open(&wav)
            .with_context(|| format!("{}", wav.display()))?
            .samples::<i16>()
            .collect::<Result<_, _>>()?;
        let loud = samples.iter().filter(|s| s.unsigned_abs() > 3000).count();
        ensure!(
            loud > SAMPLE_RATE as usize / 2,
            "the speaker recording is silent ({} samples, {loud} loud)",
            samples.len()
        );
        // An underrun (a late packet on an emulated CPU) leaves a gap, which
        // would bias a count of cycles over the whole take: measure the
        // longest unbroken stretch, and report the gaps.
        let (run, gaps) = longest_unbroken(&samples);
        let f =
            tone::frequency(run, SAMPLE_RATE).ok_or_else(|| anyhow!("no tone in the recording"))?;
        ensure!(
            (f - SPEAKER_HZ).abs() <= 5.0,
            "recorded {f:.1} Hz, want {SPEAKER_HZ}"
        );
        let s = self.guest.status().await?;
        Ok(format!(
            "recorded {:.1} s from hw:Loopback,1,1: {f:.1} Hz over {:.2} s unbroken, {gaps} gap(s); daemon received {} audio packets, {} playback underruns",
            samples.len() as f64 / SAMPLE_RATE as f64,
            run.len() as f64 / SAMPLE_RATE as f64,
            s["media"]["audio_packets_received"],
            s["media"]["playback_underruns"]
        ))
    }

    /// Scenario 4: hang up and call with the buttons.
    pub(crate) async fn buttons(&mut self) -> Result<String> {
        let t = Instant::now();
        self.guest
            .press("BTN_HANGUP", Duration::from_millis(200))
            .await?;
        let left = self.guest.wait_state("idle", 10).await? + Duration::from_millis(200);
        ensure!(
            self.guest.line("LED_CALL").await? == 0,
            "LED_CALL still lit after hangup"
        );
        self.viewer()?.expect_device_gone(10).await?;
        let gone = t.elapsed();

        let t = Instant::now();
        self.guest
            .press("BTN_CALL", Duration::from_millis(200))
            .await?;
        let joined = self.guest.wait_state("in-call", 20).await? + Duration::from_millis(200);
        ensure!(
            self.guest.line("LED_CALL").await? == 1,
            "LED_CALL dark in the call"
        );
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let got = viewer.receive(3.0).await?;
        let video = ensure_video(&got, self.size, 10, 3.0)?;
        ensure!(!got.audio_payloads.is_empty(), "no audio after rejoining");
        Ok(format!(
            "hangup press -> idle {:.2} s, LED_CALL=0, subscriber saw the stream go {:.2} s; call press -> in call {:.2} s, LED_CALL=1; media again {:.2} s after the press: {video}, {} audio packets",
            left.as_secs_f64(),
            gone.as_secs_f64(),
            joined.as_secs_f64(),
            t.elapsed().as_secs_f64() - 3.0,
            got.audio_payloads.len()
        ))
    }

    /// Scenario 5: RemoveUser bans the device until a long call press.
    pub(crate) async fn ban_and_long_press(&mut self) -> Result<String> {
        let t = Instant::now();
        let (code, body) = http_post(
            self.guest.http,
            "/api/admin/RemoveUser",
            Some(DEMO_ADMIN_KEY),
            &json!({"SdkAppId": DEMO_SDK_APP_ID, "RoomId": ROOM_ID, "UserIds": [DEVICE]})
                .to_string(),
        )
        .await?;
        ensure!(code == 200, "RemoveUser: {code} {body}");
        self.guest.wait_state("banned", 10).await?;
        let banned = t.elapsed();
        let s = self.guest.status().await?;
        ensure!(
            s["ban_reason"] == "banned",
            "ban reason {}",
            s["ban_reason"]
        );
        let leds = self.guest.leds().await?;
        ensure!(
            leds == (0, 1),
            "LED_CALL, LED_BANNED = {leds:?}, want (0, 1)"
        );
        let viewer = self.viewer()?;
        let mut stale = viewer.remote.take();
        viewer.expect_device_gone(10).await?;
        // Media stopped: nothing more arrives on the old subscription.
        if let Some(r) = stale.as_mut() {
            while r.packets.try_recv().is_ok() {}
            let more = receive(
                &mut r.packets,
                Duration::from_secs(2),
                Duration::from_secs(2),
            )
            .await;
            let n = more.video_frames.len() + more.audio_payloads.len();
            ensure!(n == 0, "{n} media units still arrived after the ban");
        }
        let sent = self.guest.status().await?["media"]["audio_packets_sent"].clone();

        // long-only: a short press leaves it banned.
        self.guest
            .press("BTN_CALL", Duration::from_millis(200))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = self.guest.status().await?;
        ensure!(
            s["state"] == "banned",
            "a short press cleared the ban: {}",
            s["state"]
        );
        ensure!(
            s["media"]["audio_packets_sent"] == sent,
            "the daemon sent audio while banned"
        );

        self.guest
            .press("BTN_CALL", Duration::from_millis(LONG_PRESS_MS + 500))
            .await?;
        let rejoined = self.guest.wait_state("in-call", 20).await?;
        let leds = self.guest.leds().await?;
        ensure!(
            leds == (1, 0),
            "after the long press LED_CALL, LED_BANNED = {leds:?}"
        );
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let got = viewer.receive(2.0).await?;
        let video = ensure_video(&got, self.size, 5, 2.0)?;
        Ok(format!(
            "RemoveUser -> banned {:.2} s, LED_BANNED=1 LED_CALL=0, no media for 2 s; short press ignored; {:.1} s hold -> in call {:.2} s after release, LEDs (1, 0), {video}",
            banned.as_secs_f64(),
            (LONG_PRESS_MS + 500) as f64 / 1000.0,
            rejoined.as_secs_f64(),
        ))
    }

    /// Scenario 6: the camera goes away and comes back during the call.
    pub(crate) async fn camera_unplug(&mut self) -> Result<String> {
        // The daemon holds /dev/video0 open, and the kernel refuses to unload
        // a driver whose device is open, as it would for any camera in use.
        let (code, out) = self.guest.sh("rmmod vivid").await?;
        ensure!(code != 0, "rmmod vivid succeeded with the camera open?");
        let refused = out.trim().to_owned();
        // So the camera is unplugged the way a USB camera goes: the driver
        // unbinds the device (the removal half of rmmod); then the module
        // unloads once the daemon has let go of it.
        let t = Instant::now();
        self.guest
            .ok("echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind")
            .await?;
        let (_, lost) = self
            .guest
            .wait_status("camera loss noticed", 10, |s| {
                s["media"]["camera_lost"] == true
            })
            .await?;
        let noticed = t.elapsed();
        ensure!(
            lost["state"] == "in-call",
            "the call ended: {}",
            lost["state"]
        );
        ensure!(
            lost["degraded"].is_string(),
            "status shows no degradation: {lost}"
        );
        let log = self.guest.device_log();
        let logged = log
            .lines()
            .find(|l| l.contains("ERROR") && l.contains("video capture failed (code 0x1003)"))
            .ok_or_else(|| anyhow!("no logged error with a code"))?
            .to_owned();
        let mut unloaded = false;
        for _ in 0..50 {
            if self.guest.sh("rmmod vivid").await?.0 == 0 {
                unloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(unloaded, "rmmod vivid still refused after the unplug");
        ensure!(
            self.guest.sh("test -e /dev/video0").await?.0 != 0,
            "/dev/video0 still exists"
        );
        // Audio continues meanwhile.
        let viewer = self.viewer()?;
        let r = viewer.receive(0.3).await?; // drain video still in flight
        drop(r);
        let during = viewer.receive(2.0).await?;
        ensure!(
            during.audio_payloads.len() >= 50,
            "audio stalled without the camera: {} packets in 2 s",
            during.audio_payloads.len()
        );
        let f = audio_frequency(&during)?;
        ensure!(
            (f - MIC_HZ).abs() <= 5.0,
            "audio during the outage: {f:.1} Hz"
        );
        ensure!(
            during.video_frames.is_empty(),
            "{} video frames arrived with the camera gone",
            during.video_frames.len()
        );

        let t = Instant::now();
        self.guest.ok("modprobe vivid").await?;
        let (_, s) = self
            .guest
            .wait_status("camera back", 10, |s| s["media"]["camera_lost"] == false)
            .await?;
        let back = t.elapsed();
        ensure!(
            s["state"] == "in-call" && s["degraded"].is_null(),
            "after modprobe: {s}"
        );
        let got = self.viewer()?.receive(3.0).await?;
        let video = ensure_video(&got, self.size, 10, 3.0)?;
        Ok(format!(
            "rmmod with the camera open: refused ({refused}); unbind -> camera_lost in {:.2} s, still in call, status degraded, log: \"{}\"; rmmod ok; audio went on ({} packets/2 s, {f:.1} Hz, 0 video); modprobe -> camera back in {:.2} s, same daemon (uptime {:.0} s), {video}",
            noticed.as_secs_f64(),
            logged.split("] ").nth(1).unwrap_or(&logged),
            during.audio_payloads.len(),
            back.as_secs_f64(),
            s["uptime_s"].as_f64().unwrap_or(0.0),
        ))
    }

    /// Scenario 7: YU12 is encoded from the driver's buffers; YUYV costs
    /// exactly one conversion pass per frame.
    pub(crate) async fn zero_copy(&mut self) -> Result<String> {
        // The camera, should scenario 6 have left it unloaded.
        self.guest.ok("modprobe vivid").await?;
        let s = self.guest.status().await?;
        let media = &s["media"];
        ensure!(
            s["frame_copies_per_frame"] == 0.0,
            "YU12: frame_copies_per_frame {}",
            s["frame_copies_per_frame"]
        );
        let yu12 = format!(
            "YU12: {} frames captured, {} copies (0 per frame)",
            media["video_frames_captured"], media["frame_copies"]
        );
        ensure!(
            self.guest
                .device_log()
                .contains(&format!("YU12 {}x{} @30 fps", self.size.0, self.size.1)),
            "the camera was not opened as YU12"
        );

        // The same board provisioned for YUYV: restart the service.
        self.stop_device().await?;
        self.start_device("/etc/callbox/device-yuyv.toml").await?;
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let got = viewer.receive(2.0).await?;
        let video = ensure_video(&got, self.size, 5, 2.0)?;
        let s = self.guest.status().await?;
        let media = &s["media"];
        let (captured, copies) = (
            media["video_frames_captured"].as_u64().unwrap_or(0),
            media["frame_copies"].as_u64().unwrap_or(u64::MAX),
        );
        ensure!(
            captured > 0 && copies == captured,
            "YUYV: {copies} copies for {captured} frames"
        );
        ensure!(
            self.guest
                .device_log()
                .contains(&format!("YUYV {}x{} @30 fps", self.size.0, self.size.1)),
            "the camera was not opened as YUYV"
        );
        Ok(format!(
            "{yu12}; YUYV: {captured} frames, {copies} passes (frame_copies_per_frame {}), {video}",
            s["frame_copies_per_frame"]
        ))
    }

    /// Scenario 8: the service starts while the camera is not there (a USB
    /// camera still enumerating, or unplugged): it joins audio-only,
    /// degraded, and picks the camera up when it appears.
    pub(crate) async fn boot_without_camera(&mut self) -> Result<String> {
        self.stop_device().await?;
        self.guest.ok("rmmod vivid").await?;
        self.guest.ok("hil-device start").await?;
        let (joined, s) = self
            .guest
            .wait_status("in-call without a camera", 30, |s| s["state"] == "in-call")
            .await?;
        ensure!(
            s["media"]["camera_lost"] == true && s["degraded"].is_string(),
            "not degraded: {s}"
        );
        let log = self.guest.device_log();
        ensure!(
            log.contains("/dev/video0 is gone") && log.contains("starting audio-only"),
            "no logged error for the missing camera"
        );
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let during = viewer.receive(2.0).await?;
        let f = audio_frequency(&during)?;
        ensure!(
            (f - MIC_HZ).abs() <= 5.0 && during.video_frames.is_empty(),
            "audio-only: {f:.1} Hz, {} video frames",
            during.video_frames.len()
        );
        let t = Instant::now();
        self.guest.ok("modprobe vivid").await?;
        self.guest
            .wait_status("camera found", 10, |s| s["media"]["camera_lost"] == false)
            .await?;
        let found = t.elapsed();
        let got = self.viewer()?.receive(3.0).await?;
        let video = ensure_video(&got, self.size, 10, 3.0)?;
        Ok(format!(
            "no /dev/video0: in call (degraded) {:.2} s after start, {} audio packets/2 s at {f:.1} Hz, 0 video; modprobe -> camera found in {:.2} s, {video}",
            joined.as_secs_f64(),
            during.audio_payloads.len(),
            found.as_secs_f64()
        ))
    }

    /// Scenario 9: `callbox probe --config` opens the camera as the daemon
    /// would: provisioned for passthrough (YUYV and H264 listed, vivid has
    /// no H.264) it fails the camera, naming H264, as the daemon would; the
    /// same camera for OpenH264 passes. The daemon is stopped meanwhile (a
    /// streaming camera refuses a second format).
    pub(crate) async fn probe_agrees(&mut self) -> Result<String> {
        self.stop_device().await?;
        let (code, out) = self
            .guest
            .sh("callbox probe --config /etc/callbox/device-passthrough.toml")
            .await?;
        let line = probe_line(&out, "video.device");
        ensure!(
            code == 1
                && line.starts_with("FAIL")
                && line.contains("none of the configured formats H264"),
            "passthrough probe exited {code}: {out}"
        );
        // vicodec, loaded after vivid, is the board's M2M encoder.
        let encoder = out
            .lines()
            .skip_while(|l| !l.starts_with("Video encoders"))
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned();
        ensure!(
            encoder.contains("(vicodec)")
                && encoder.contains("makes FWHT from")
                && encoder.contains("YU12"),
            "the probe's encoders: {out}"
        );
        let (ok_code, ok_out) = self
            .guest
            .sh("callbox probe --config /etc/callbox/device-yuyv.toml")
            .await?;
        ensure!(ok_code == 0, "YUYV probe exited {ok_code}: {ok_out}");
        let (copied, zero_copy, auto) = self.m2m_encoder().await?;
        self.start_device("/etc/callbox/device.toml").await?;
        Ok(format!(
            "passthrough on vivid: exit 1, \"{line}\"; openh264 on YUYV: exit 0; daemon back in call; encoders: \"{encoder}\"; 640x480: \"{zero_copy}\"; 640x360: \"{copied}\"; \"{auto}\""
        ))
    }

    /// The daemon's M2M encoder path on vicodec (FWHT), through `probe
    /// --encoder`: at 640x480 vivid's buffers go in by DMABUF (0 copies),
    /// at 640x360 vicodec pads the height and each frame is copied once;
    /// either way every frame is coded, a keyframe request and a restart
    /// after the drain give keyframes, vicodec's decoder gives the
    /// pictures back at >= 30 dB, and the H.264 controls vicodec refuses
    /// are listed, not fatal. `auto` on this board (no H.264 encoder)
    /// names OpenH264 and why.
    async fn m2m_encoder(&mut self) -> Result<(String, String, String)> {
        let mut lines = Vec::new();
        for (config, copies) in [("device.toml", "1.0"), ("device-auto.toml", "0.0")] {
            let (code, out) = self
                .guest
                .sh(&format!(
                    "callbox probe --config /etc/callbox/{config} --encoder FWHT"
                ))
                .await?;
            let encoded = probe_line(&out, "video.encoder: V4L2 M2M encoder");
            let psnr = number_after(&encoded, "Y-PSNR ").unwrap_or(0.0);
            ensure!(
                code == 0
                    && encoded.contains("60 frames in, 60 coded")
                    && encoded.contains("keyframe on request: yes; 60 with their timestamps")
                    && encoded.contains(&format!("{copies} copies per frame"))
                    && psnr >= 30.0
                    && encoded.contains("frames decoded by /dev/")
                    && encoded.contains("restarted: 10 of 10 coded, the first a keyframe: yes")
                    && encoded.contains("h264_profile (")
                    && encoded.contains("force_key_frame ("),
                "probe --config {config} --encoder FWHT exited {code}: {out}"
            );
            let speed = probe_line(&out, "video.encoder_speed");
            lines.push((format!("{encoded}; {speed}"), out));
        }
        let auto = probe_line(&lines[1].1, "video.encoder: auto");
        ensure!(
            auto.contains("auto: OpenH264, since no V4L2 M2M encoder makes H264")
                && auto.contains("(vicodec) makes FWHT"),
            "auto on a board without an H.264 encoder: {}",
            lines[1].1
        );
        let zero_copy = lines.pop().map(|l| l.0).unwrap_or_default();
        let copied = lines.pop().map(|l| l.0).unwrap_or_default();
        Ok((copied, zero_copy, auto))
    }

    /// Scenario 10: a speakerphone's echo, simulated: `callbox audio loop`
    /// sends what the speaker plays back into the microphone 80 ms later,
    /// 6 dB down, with a near-end tone. `callbox probe --echo` measures the
    /// path through the real drivers and runs the device's canceller on
    /// what it recorded; with the path cut it reports the speaker unheard.
    pub(crate) async fn echo_probe(&mut self) -> Result<String> {
        self.stop_device().await?;
        self.guest
            .ok("kill $(cat /run/mic-loop.pid); kill $(pidof aplay); sleep 0.2")
            .await?;
        self.guest.ok(ECHO_LOOP).await?;
        let measured = self.probe_looped_path().await;
        self.guest
            .ok("kill $(cat /run/echo-loop.pid); sleep 0.2")
            .await?;
        let cut = self.probe_cut_path().await;
        let cost = self.processing_cost().await;
        // Leave the board as the other scenarios found it.
        self.guest.ok(MIC_LOOP).await?;
        self.start_device("/etc/callbox/device.toml").await?;
        Ok(format!("{}; path cut: {}; {}", measured?, cut?, cost?))
    }

    /// What the whole chain costs on this board, beside the pass-through:
    /// `callbox audio process` on 3 s of audio, timed (relative only
    /// under TCG).
    async fn processing_cost(&mut self) -> Result<String> {
        let mut took = Vec::new();
        for switches in ["", "--aec off --ns off --agc off --hpf off"] {
            let t = Instant::now();
            self.guest
                .ok(&format!("callbox audio process --far /share/far3.wav --mic /share/mic3.wav --out /tmp/out.wav {switches}"))
                .await?;
            took.push(t.elapsed().as_secs_f64());
        }
        // 300 frames of 10 ms.
        let per_frame_ms = (took[0] - took[1]) * 1000.0 / 300.0;
        Ok(format!(
            "processing 3 s in the guest: full chain {:.2} s, pass-through {:.2} s: {per_frame_ms:.2} ms per 10 ms frame",
            took[0], took[1]
        ))
    }

    async fn probe_echo(&self) -> Result<(i32, Value, String)> {
        let (code, out) = self
            .guest
            .sh("callbox probe --config /etc/callbox/device.toml --echo --json 2>/dev/null")
            .await?;
        let report: Value =
            serde_json::from_str(&out).with_context(|| format!("probe exited {code}: {out}"))?;
        let check = report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["key"] == "audio.echo"))
            .map(|c| c["detail"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        Ok((code, report["echo"].clone(), check))
    }

    /// The looped path: its delay within 10 ms, and the canceller removing
    /// at least 20 dB of its echo.
    async fn probe_looped_path(&mut self) -> Result<String> {
        // The path must carry sound before the probe plays.
        self.guest
            .ok("i=0; until grep -q 'path delay' /share/loop.log; do [ $i -ge 100 ] && exit 1; sleep 0.1; i=$((i + 1)); done")
            .await
            .context("callbox audio loop did not start")?;
        let (code, echo, check) = self.probe_echo().await?;
        let delay = echo["delay_ms"].as_f64().unwrap_or(f64::NAN);
        let removed = echo["echo_reduction_db"].as_f64().unwrap_or(f64::NAN);
        ensure!(
            code == 0 && (delay - ECHO_PATH_MS).abs() <= 10.0 && removed >= 20.0,
            "probe --echo exited {code}: {check} (want delay {ECHO_PATH_MS} +- 10 ms, >= 20 dB removed)"
        );
        Ok(format!("probe --echo: {check}"))
    }

    /// Nothing carries the speaker to the microphone, which hears only the
    /// room (the near tone): the probe says the speaker was not heard.
    async fn probe_cut_path(&mut self) -> Result<String> {
        self.guest
            .ok("aplay -q -D hw:Loopback,0,0 /share/near.wav > /dev/null 2>&1 &")
            .await?;
        let probed = self.probe_echo().await;
        self.guest.ok("kill $(pidof aplay); sleep 0.2").await?;
        let (code, echo, check) = probed?;
        ensure!(
            code == 1 && echo.is_null() && check.contains("did not reach the microphone"),
            "probe --echo on a cut path exited {code}: {check}"
        );
        Ok(format!("exit 1, \"{check}\""))
    }

    /// Scenario 11: the board's screen (bochs-display, the daemon its DRM
    /// master) shows a caller: the host publishes the test pattern, and
    /// QMP screendumps of the guest's screen carry its stamps, counters
    /// rising; `ctl screenshot` matches the screendump; when the caller
    /// stops, the idle picture.
    pub(crate) async fn screen_shows_caller(&mut self) -> Result<String> {
        self.stop_device().await?;
        self.start_device("/etc/callbox/device-screen.toml").await?;
        let result = async {
            let shown = self.show_pattern().await?;
            self.guest.ok("hil-device stop").await?;
            let refused = self.unknown_connector_refused().await?;
            let blank = self.blank_screen_powers_down().await?;
            Ok::<_, anyhow::Error>(format!("{shown}; {refused}; {blank}"))
        }
        .await;
        self.guest.ok("hil-device stop").await.ok();
        self.start_device("/etc/callbox/device.toml").await?;
        result
    }

    /// A connector the board lacks is a config error naming the key and
    /// what the board has, from `probe --config` and from the daemon,
    /// which exits at once.
    async fn unknown_connector_refused(&mut self) -> Result<String> {
        let config = "/etc/callbox/device-hdmi.toml";
        let (code, out) = self
            .guest
            .sh(&format!("callbox probe --config {config}"))
            .await?;
        let line = out
            .lines()
            .find(|l| l.contains("display.connector"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        ensure!(
            code == 1 && line.starts_with("FAIL") && line.contains("Virtual-1"),
            "probe with connector HDMI-A-9 exited {code}: {out}"
        );
        let (code, out) = self
            .guest
            .sh(&format!("timeout 20 callbox device --config {config} 2>&1"))
            .await?;
        ensure!(
            code == 1 && out.contains(config) && out.contains("display.connector"),
            "the daemon with connector HDMI-A-9 exited {code}: {out}"
        );
        Ok(format!("connector HDMI-A-9: probe \"{line}\", the daemon exits 1 naming {config} and display.connector"))
    }

    /// With `idle = "blank"` and no one to show, the daemon powers the
    /// connector down: the kernel's DPMS state for it reads Off.
    async fn blank_screen_powers_down(&mut self) -> Result<String> {
        self.start_device("/etc/callbox/device-blank.toml").await?;
        let t = Instant::now();
        loop {
            let dpms = self.guest.ok("cat /sys/class/drm/card*-*/dpms").await?;
            if dpms.trim() == "Off" {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "DPMS still {dpms:?} 10 s after start with idle = blank"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(format!(
            "idle = blank: DPMS Off {:.1} s after the daemon was in call",
            t.elapsed().as_secs_f64()
        ))
    }

    async fn show_pattern(&mut self) -> Result<String> {
        let viewer = self.viewer()?;
        let local = viewer.client.publish(false, true).await?;
        let track = local
            .video()
            .cloned()
            .ok_or_else(|| anyhow!("no video track"))?;
        let size = (640, 480);
        let sender = tokio::spawn(async move {
            let mut enc = OpenH264Encoder::new(EncoderSettings {
                width: size.0,
                height: size.1,
                fps: 15,
                bitrate_bps: 1_000_000,
                keyframe_interval_frames: 30,
                library: None,
            })?;
            let mut buf = vec![0u8; size.0 * size.1 * 3 / 2];
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(66));
            for counter in 0u32.. {
                tick.tick().await;
                let stamp = pattern::Stamp {
                    counter,
                    capture_us: pattern::now_us(),
                };
                let frame = pattern_frame(&mut buf, size.0, size.1, stamp)
                    .ok_or_else(|| anyhow!("frame"))?;
                if enc.encode(&frame, counter == 0, &mut out)?.is_some() {
                    track
                        .write(Bytes::copy_from_slice(&out), Duration::from_millis(66))
                        .await?;
                }
            }
            Ok::<(), anyhow::Error>(())
        });
        let cpu = self.daemon_cpu_ticks().await?;
        let seen = self.screen_stamps().await;
        let cpu = self.daemon_cpu_pct(cpu).await?;
        let unplugged = match &seen {
            Ok(_) => self.screen_unplugged().await,
            Err(_) => Ok(String::new()),
        };
        sender.abort();
        self.viewer()?.client.unpublish().await?;
        let (first, second, lag_ms) = seen?;
        let unplugged = unplugged?;
        let idle = self.screen_idle().await?;
        Ok(format!(
            "the pattern on the screen: counters {} -> {} in 0.5 s, {lag_ms:.0} ms from the publisher's stamp to the screendump, daemon {cpu:.0} % of a core meanwhile; {unplugged}; {idle}",
            first.counter, second.counter
        ))
    }

    /// The daemon's CPU time so far (clock ticks), and when it was read.
    async fn daemon_cpu_ticks(&self) -> Result<(Instant, u64)> {
        let stat = self
            .guest
            .ok("cat /proc/$(cat /run/callbox-device.pid)/stat")
            .await?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (user, system) = tick(11)
            .zip(tick(12))
            .ok_or_else(|| anyhow!("stat: {stat}"))?;
        Ok((Instant::now(), user + system))
    }

    /// Share of one core the daemon used since `since` (100 ticks a second).
    async fn daemon_cpu_pct(&self, since: (Instant, u64)) -> Result<f64> {
        let now = self.daemon_cpu_ticks().await?;
        let secs = (now.0 - since.0).as_secs_f64();
        Ok((now.1 - since.1) as f64 / 100.0 / secs * 100.0)
    }

    /// The screen unplugged under the daemon (its DRM driver unbound from
    /// the device): the call goes on, the status says the screen is
    /// missing; bound again, the caller is back on the screen.
    async fn screen_unplugged(&mut self) -> Result<String> {
        let dev = self
            .guest
            .ok("basename $(readlink /sys/class/drm/card0/device)")
            .await?;
        let dev = dev.trim();
        self.guest
            .ok(&format!(
                "echo {dev} > /sys/bus/pci/drivers/bochs-drm/unbind"
            ))
            .await?;
        let (lost, _) = self
            .guest
            .wait_status("the screen reported missing", 10, |s| {
                s["state"] == "in-call"
                    && s["media"]["display_lost"] == true
                    && s["degraded"].is_string()
            })
            .await?;
        self.guest
            .ok(&format!("echo {dev} > /sys/bus/pci/drivers/bochs-drm/bind"))
            .await?;
        let t = Instant::now();
        loop {
            let (size, rgb) = self.guest.screendump().await?;
            if screen_stamp(size, &rgb).is_some() {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(20),
                "the caller not back on the screen 20 s after the driver was bound again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let back = t.elapsed();
        self.guest
            .wait_status("the screen back in the status", 10, |s| {
                s["media"]["display_lost"] == false && s["degraded"].is_null()
            })
            .await?;
        Ok(format!(
            "driver unbound: still in call, screen reported missing after {:.2} s; bound again: the caller back on the screen after {:.2} s",
            lost.as_secs_f64(),
            back.as_secs_f64()
        ))
    }

    /// Two screendumps 0.5 s apart, both with the pattern's stamp.
    async fn screen_stamps(&mut self) -> Result<(pattern::Stamp, pattern::Stamp, f64)> {
        let t = Instant::now();
        let first = loop {
            let (size, rgb) = self.guest.screendump().await?;
            if let Some(s) = screen_stamp(size, &rgb) {
                break s;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(20),
                "no pattern on the screen within 20 s (screen {size:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (size, rgb) = self.guest.screendump().await?;
        let dumped = pattern::now_us();
        let second = screen_stamp(size, &rgb).ok_or_else(|| anyhow!("the pattern went away"))?;
        ensure!(
            second.counter > first.counter,
            "the screen does not move: {first:?} then {second:?}"
        );
        Ok((
            first,
            second,
            dumped.saturating_sub(second.capture_us) as f64 / 1000.0,
        ))
    }

    /// The caller gone: the idle picture, and `ctl screenshot` shows what
    /// the screendump does.
    async fn screen_idle(&mut self) -> Result<String> {
        let t = Instant::now();
        let (size, rgb) = loop {
            let (size, rgb) = self.guest.screendump().await?;
            let black = rgb.chunks(3).filter(|p| p.iter().all(|&c| c < 8)).count();
            if screen_stamp(size, &rgb).is_none() && black * 10 > size.0 * size.1 * 9 {
                break (size, rgb);
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "no idle picture within 10 s of the caller leaving"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.guest
            .ok("callbox ctl screenshot /share/screen.png")
            .await?;
        let decoder =
            png::Decoder::new(std::fs::File::open(self.guest.share().join("screen.png"))?);
        let mut reader = decoder.read_info()?;
        let mut shot = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut shot)?;
        ensure!(
            (info.width as usize, info.height as usize) == size,
            "screenshot {}x{}, screen {size:?}",
            info.width,
            info.height
        );
        // Two BT.601 conversions (ours for the PNG, the yuv crate's for
        // the screen): equal within rounding.
        let worst = shot
            .iter()
            .zip(&rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        ensure!(
            worst <= 3,
            "screenshot and screendump differ by up to {worst}"
        );
        Ok(format!(
            "idle picture {:.2} s after the caller left; ctl screenshot = screendump ({}x{}, within {worst})",
            t.elapsed().as_secs_f64(),
            size.0,
            size.1
        ))
    }
}

/// The pattern's stamp on an RGB screen at 640x480 (drawn 1:1).
fn screen_stamp(size: (usize, usize), rgb: &[u8]) -> Option<pattern::Stamp> {
    if size != (640, 480) {
        return None;
    }
    let mut i420 = vec![128u8; size.0 * size.1 * 3 / 2];
    for (y, px) in i420.iter_mut().zip(rgb.chunks(3)) {
        let l = 0.299 * px[0] as f64 + 0.587 * px[1] as f64 + 0.114 * px[2] as f64;
        *y = (16.0 + l * 219.0 / 255.0).round() as u8;
    }
    pattern::read(&I420::packed(&i420, size.0, size.1)?)
}

/// The probe's check line for `key`, trimmed (empty when there is none).
/// The number after `label` in `line`, e.g. 35.2 in "Y-PSNR 35.2 dB".
fn number_after(line: &str, label: &str) -> Option<f64> {
    let rest = &line[line.find(label)? + label.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn probe_line(out: &str, key: &str) -> String {
    out.lines()
        .find(|l| l.contains(key))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
