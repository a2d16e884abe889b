//! Audio as the device handles it: 20 ms mono frames at 48 kHz. Sources
//! (ALSA capture, or the synthetic tone) and sinks (ALSA playback, a WAV
//! file, or nothing) behind one trait each; a processing stage between
//! capture and encoder (`processing`: echo cancellation, noise
//! suppression, gain control, or nothing); Opus encode and decode (`opus` crate, libopus);
//! and the mixer for several remote streams.

use crate::device::tone::Tone;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SAMPLE_RATE: u32 = 48_000;
pub const FRAME_MS: u64 = 20;
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE as u64 * FRAME_MS / 1000) as usize;
pub const FRAME: Duration = Duration::from_millis(FRAME_MS);

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("ALSA device {device}: {what}: {source}")]
    Alsa {
        device: String,
        what: &'static str,
        source: alsa::Error,
    },
    #[error("WAV file {}: {source}", .path.display())]
    Wav { path: PathBuf, source: hound::Error },
    #[error("Opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("audio.wav_path: the wav playback sink needs a path")]
    NoWavPath,
}

/// One 20 ms frame of microphone audio per call, blocking until it is there.
pub trait AudioSource: Send {
    fn read(&mut self, frame: &mut [i16]) -> Result<(), AudioError>;
    fn describe(&self) -> String;
    /// Samples captured but not yet read (the device's buffer), if known.
    fn delay_samples(&self) -> Option<i64> {
        None
    }
}

/// One 20 ms frame of speaker audio per call, blocking at the sink's real-time rate.
pub trait AudioSink: Send {
    fn write(&mut self, frame: &[i16]) -> Result<(), AudioError>;
    fn describe(&self) -> String;
    /// Samples written but not yet played (the device's buffer), if known.
    fn delay_samples(&self) -> Option<i64> {
        None
    }
}

/// Between capture and encoder: echo cancellation, noise suppression and
/// gain control (`crate::device::processing`), or nothing.
pub trait AudioProcessor: Send {
    /// Process one frame in place; `buffered`: samples the microphone
    /// still held when it was read (the echo delay's capture part).
    fn process(&mut self, frame: &mut [i16], buffered: Option<i64>);
}

/// The processing stage that leaves the microphone's audio as it is.
pub struct NoProcessing;

impl AudioProcessor for NoProcessing {
    fn process(&mut self, _frame: &mut [i16], _buffered: Option<i64>) {}
}

/// Keeps a loop on a fixed period without drift: each wait ends at
/// start + n * period, however long the work in between took.
pub struct Pacer {
    start: Instant,
    period: Duration,
    n: u32,
}

impl Pacer {
    pub fn new(period: Duration) -> Self {
        Pacer {
            start: Instant::now(),
            period,
            n: 0,
        }
    }

    pub fn wait(&mut self) {
        self.n += 1;
        let due = self.start + self.period * self.n;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > self.period * 5 {
            // Far behind (machine stalled): restart the schedule instead of bursting.
            self.start = now;
            self.n = 0;
        }
    }
}

/// The synthetic microphone: a sine tone, delivered in real time.
pub struct ToneSource {
    tone: Tone,
    freq: f64,
    pacer: Pacer,
}

impl ToneSource {
    pub fn new(freq_hz: f64) -> Self {
        ToneSource {
            tone: Tone::new(freq_hz, SAMPLE_RATE, 0.3),
            freq: freq_hz,
            pacer: Pacer::new(FRAME),
        }
    }
}

impl AudioSource for ToneSource {
    fn read(&mut self, frame: &mut [i16]) -> Result<(), AudioError> {
        self.pacer.wait();
        self.tone.fill(frame);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("synthetic tone {} Hz", self.freq)
    }
}

/// Plays into a WAV file (mono, 16 bit, 48 kHz) in real time. The header
/// is brought up to date every second so the file can be read while it grows.
pub struct WavSink {
    path: PathBuf,
    writer: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
    pacer: Pacer,
    frames: u64,
}

impl WavSink {
    pub fn create(path: &Path) -> Result<Self, AudioError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|source| AudioError::Wav {
            path: path.to_owned(),
            source,
        })?;
        Ok(WavSink {
            path: path.to_owned(),
            writer,
            pacer: Pacer::new(FRAME),
            frames: 0,
        })
    }
}

impl AudioSink for WavSink {
    fn write(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        self.pacer.wait();
        let wav = |source| AudioError::Wav {
            path: self.path.clone(),
            source,
        };
        let mut w = self.writer.get_i16_writer(frame.len() as u32);
        for &s in frame {
            w.write_sample(s);
        }
        w.flush().map_err(wav)?;
        self.frames += 1;
        if self.frames.is_multiple_of(50) {
            self.writer.flush().map_err(wav)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("WAV file {}", self.path.display())
    }
}

/// Discards audio, in real time.
pub struct NullSink(Pacer);

impl NullSink {
    pub fn new() -> Self {
        NullSink(Pacer::new(FRAME))
    }
}

impl Default for NullSink {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioSink for NullSink {
    fn write(&mut self, _frame: &[i16]) -> Result<(), AudioError> {
        self.0.wait();
        Ok(())
    }

    fn describe(&self) -> String {
        "null".into()
    }
}

/// Opus encoder for the microphone: VoIP mode, in-band FEC, mono.
pub struct OpusEncoder {
    enc: opus::Encoder,
    out: Vec<u8>,
}

impl OpusEncoder {
    pub fn new(bitrate_bps: i32) -> Result<Self, AudioError> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_bitrate(opus::Bitrate::Bits(bitrate_bps))?;
        enc.set_inband_fec(true)?;
        // FEC is only spent when the encoder expects loss.
        enc.set_packet_loss_perc(10)?;
        Ok(OpusEncoder {
            enc,
            out: vec![0; 1500],
        })
    }

    /// One 20 ms frame -> one Opus packet (borrowed until the next call).
    pub fn encode(&mut self, frame: &[i16]) -> Result<&[u8], AudioError> {
        let n = self.enc.encode(frame, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

/// Opus decoder for one remote stream, with loss concealment and FEC recovery.
pub struct OpusDecoder {
    dec: opus::Decoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, AudioError> {
        Ok(OpusDecoder {
            dec: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
        })
    }

    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, AudioError> {
        Ok(self.dec.decode(packet, out, false)?)
    }

    /// A lost frame: rebuilt from the next packet's FEC data when we have
    /// it, concealed otherwise.
    pub fn conceal(&mut self, next: Option<&[u8]>, out: &mut [i16]) -> Result<usize, AudioError> {
        match next {
            Some(p) => Ok(self.dec.decode(p, out, true)?),
            None => Ok(self.dec.decode(&[], out, false)?),
        }
    }
}

/// Adds `frame` into `mix`, saturating.
pub fn mix_into(mix: &mut [i16], frame: &[i16]) {
    for (m, &s) in mix.iter_mut().zip(frame) {
        *m = m.saturating_add(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tone;

    #[test]
    fn opus_round_trip_keeps_the_tone() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut t = Tone::new(440.0, SAMPLE_RATE, 0.3);
        let mut all = Vec::new();
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let mut out = vec![0i16; FRAME_SAMPLES];
        for i in 0..50 {
            t.fill(&mut frame);
            let packet = enc.encode(&frame).unwrap().to_vec();
            // Every 10th packet lost: concealment fills the gap.
            let n = if i % 10 == 5 {
                dec.conceal(None, &mut out).unwrap()
            } else {
                dec.decode(&packet, &mut out).unwrap()
            };
            assert_eq!(n, FRAME_SAMPLES);
            all.extend_from_slice(&out);
        }
        let f = tone::frequency(&all[4800..], SAMPLE_RATE).unwrap();
        assert!((f - 440.0).abs() < 5.0, "{f}");
    }

    #[test]
    fn mixing_saturates() {
        let mut m = vec![30_000i16, -30_000, 5];
        mix_into(&mut m, &[10_000, -10_000, 5]);
        assert_eq!(m, vec![i16::MAX, i16::MIN, 10]);
    }
}
