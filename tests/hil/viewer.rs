//! The subscriber on the host and its checks on what it saw and heard.

use super::*;

/// The subscriber on the host: a Rust client in the device's room.
pub(crate) struct Viewer {
    pub(crate) client: Client,
    pub(crate) remote: Option<RemoteStream>,
}

impl Viewer {
    pub(crate) async fn join(http: SocketAddr) -> Result<Viewer> {
        let config = ClientConfig {
            url: format!("ws://{http}/ws"),
            sdk_app_id: DEMO_SDK_APP_ID,
            user_id: "viewer".into(),
            user_sig: common::sig("viewer"),
            net: NetConfig {
                bind: Ipv4Addr::LOCALHOST.into(),
                ..Default::default()
            },
            tls_ca_pem: None,
            janus: None,
        };
        let mut client = Client::connect(config).await?;
        let existing = client.join(RoomId::Num(ROOM_ID)).await?;
        let mut v = Viewer {
            client,
            remote: None,
        };
        if let Some(info) = existing.into_iter().find(|s| s.user_id == DEVICE) {
            v.remote = Some(v.client.subscribe(&info).await?);
        }
        Ok(v)
    }

    /// Wait for the device's publication (if not subscribed yet) and subscribe.
    pub(crate) async fn subscribe_device(&mut self, secs: u64) -> Result<()> {
        if self.remote.is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.client.next_event()).await {
                Ok(Some(ServerMessage::StreamAdded { stream })) if stream.user_id == DEVICE => {
                    self.remote = Some(self.client.subscribe(&stream).await?);
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("signaling closed"),
                Err(_) => bail!("the device published nothing within {secs} s"),
            }
        }
    }

    /// Wait until the device's publication is gone (left, banned).
    pub(crate) async fn expect_device_gone(&mut self, secs: u64) -> Result<()> {
        expect_event(
            &mut self.client,
            secs,
            "device's stream-removed",
            |e| matches!(e, ServerMessage::StreamRemoved { user_id, .. } if user_id == DEVICE),
        )
        .await;
        self.remote = None;
        Ok(())
    }

    pub(crate) async fn receive(&mut self, secs: f64) -> Result<Received> {
        let remote = self
            .remote
            .as_mut()
            .ok_or_else(|| anyhow!("not subscribed to the device"))?;
        let window = Duration::from_secs_f64(secs);
        Ok(receive(&mut remote.packets, window, window).await)
    }
}

/// What the subscriber saw of the device's video: frames decoded at `size`
/// with a picture on them (vivid's colour bars, not a flat field).
pub(crate) struct VideoCheck {
    pub(crate) decoded: usize,
    pub(crate) wrong_size: Option<(usize, usize)>,
    pub(crate) blank: usize,
}

pub(crate) fn check_video(r: &Received, size: (usize, usize)) -> VideoCheck {
    let mut c = VideoCheck {
        decoded: 0,
        wrong_size: None,
        blank: 0,
    };
    let Ok(mut dec) = H264Decoder::new() else {
        return c;
    };
    for au in &r.video_frames {
        let Ok(Some((dims, spread))) = dec.decode(au, |f| {
            let rows = || (0..f.height).flat_map(|r| &f.y[r * f.y_stride..][..f.width]);
            let (lo, hi) = (rows().min().copied(), rows().max().copied());
            ((f.width, f.height), hi.zip(lo).map_or(0, |(h, l)| h - l))
        }) else {
            continue;
        };
        c.decoded += 1;
        if dims != size {
            c.wrong_size = Some(dims);
        }
        if spread < 64 {
            c.blank += 1;
        }
    }
    c
}

/// Frames decoded in a `secs` window: at `size`, none blank, at least
/// `at_least`; the summary for the report.
pub(crate) fn ensure_video(
    r: &Received,
    size: (usize, usize),
    at_least: usize,
    secs: f64,
) -> Result<String> {
    let c = check_video(r, size);
    ensure!(
        c.wrong_size.is_none(),
        "decoded frames at {:?}, vivid gives {size:?}",
        c.wrong_size
    );
    ensure!(
        c.blank == 0,
        "{} of {} decoded frames are blank",
        c.blank,
        c.decoded
    );
    ensure!(
        c.decoded >= at_least,
        "decoded {} frames (of {} received), needed {at_least}",
        c.decoded,
        r.video_frames.len()
    );
    Ok(format!(
        "{} frames decoded at {}x{} in {secs} s ({:.1} fps)",
        c.decoded,
        size.0,
        size.1,
        c.decoded as f64 / secs
    ))
}

pub(crate) fn audio_frequency(r: &Received) -> Result<f64> {
    let mut dec = OpusDecoder::new()?;
    let mut pcm = Vec::new();
    let mut buf = vec![0i16; FRAME_SAMPLES * 6];
    for p in &r.audio_payloads {
        let n = dec.decode(p, &mut buf)?;
        pcm.extend_from_slice(&buf[..n]);
    }
    ensure!(
        pcm.len() >= SAMPLE_RATE as usize,
        "only {} samples of audio",
        pcm.len()
    );
    // The microphone's tone file restarts now and then: measure between gaps.
    let (run, _) = longest_unbroken(&pcm[SAMPLE_RATE as usize / 4..]);
    ensure!(
        run.len() >= SAMPLE_RATE as usize / 2,
        "no unbroken half second of tone in {} samples",
        pcm.len()
    );
    tone::frequency(run, SAMPLE_RATE)
        .ok_or_else(|| anyhow!("no tone in {} samples of audio", pcm.len()))
}

/// The longest stretch of `samples` without a silent gap (over 2 ms below
/// a tenth of the peak), and how many gaps there were.
pub(crate) fn longest_unbroken(samples: &[i16]) -> (&[i16], usize) {
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let quiet = peak / 10;
    let gap = SAMPLE_RATE as usize / 500;
    let (mut best, mut gaps) = (0..0, 0);
    let (mut start, mut silent) = (None, 0);
    for (i, s) in samples.iter().enumerate() {
        if s.unsigned_abs() > quiet {
            if silent > gap && start.is_some() {
                gaps += 1;
                start = None;
            }
            let from = *start.get_or_insert(i);
            if i + 1 - from > best.len() {
                best = from..i + 1;
            }
            silent = 0;
        } else {
            silent += 1;
        }
    }
    (&samples[best], gaps)
}
