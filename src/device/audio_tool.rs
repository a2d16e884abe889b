//! `callbox audio process`: the device's processing chain on recordings,
//! for integrators tuning an enclosure (WebRTC's `audioproc_f` is the
//! model). Reads what the speaker played (`--far`) and what the microphone
//! heard (`--mic`), both 48 kHz mono 16-bit WAV of the same length, runs
//! exactly [`processing::process_recording`], writes the result in the same
//! format and length, and reports the canceller's delay and ERLE.
//!
//! Also the device I/O of the echo self-test (`callbox probe --echo`,
//! analysed by [`echo_probe`]) and `callbox audio loop`, a simulated
//! speaker-to-microphone path between two PCMs ([`DelayLine`]) for testing
//! the canceller end to end on a loopback card.

use crate::device::audio::{AudioError, AudioSink, AudioSource, FRAME_MS, FRAME_SAMPLES};
use crate::device::delay_line::DelayLine;
use crate::device::echo_probe::{self, EchoFault, EchoMeasurement};
use crate::device::processing::{self, EchoReport, Settings};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AudioToolError {
    #[error("{}: not a readable WAV file: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("{}: {found}; 48 kHz mono 16-bit WAV is needed", .path.display())]
    Format { path: PathBuf, found: String },
    #[error("{} has {far} samples and {} has {mic}: the recordings must be the same length", .far_path.display(), .mic_path.display())]
    Length {
        far_path: PathBuf,
        far: usize,
        mic_path: PathBuf,
        mic: usize,
    },
    #[error("{}: cannot write: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
}

/// A 48 kHz mono 16-bit WAV file's samples.
pub fn read_mono48(path: &Path) -> Result<Vec<i16>, AudioToolError> {
    let read = |source| AudioToolError::Read {
        path: path.to_owned(),
        source,
    };
    let r = hound::WavReader::open(path).map_err(read)?;
    let s = r.spec();
    if s.sample_rate != 48_000 || s.channels != 1 || s.bits_per_sample != 16 {
        return Err(AudioToolError::Format {
            path: path.to_owned(),
            found: format!(
                "{} Hz, {} channel(s), {}-bit",
                s.sample_rate, s.channels, s.bits_per_sample
            ),
        });
    }
    r.into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(read)
}

/// Run the chain on `far` and `mic`, write `out`; the canceller's report.
pub fn process_files(
    far: &Path,
    mic: &Path,
    out: &Path,
    settings: Settings,
) -> Result<EchoReport, AudioToolError> {
    let (far_samples, mic_samples) = (read_mono48(far)?, read_mono48(mic)?);
    if far_samples.len() != mic_samples.len() {
        return Err(AudioToolError::Length {
            far_path: far.to_owned(),
            far: far_samples.len(),
            mic_path: mic.to_owned(),
            mic: mic_samples.len(),
        });
    }
    let (processed, report) = processing::process_recording(&far_samples, &mic_samples, settings);
    let write = |source| AudioToolError::Write {
        path: out.to_owned(),
        source,
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(out, spec).map_err(write)?;
    for s in processed {
        w.write_sample(s).map_err(write)?;
    }
    w.finalize().map_err(write)?;
    Ok(report)
}

/// Play [`echo_probe::probe_signal`] on `speaker` while recording `mic`,
/// and analyse the recording. Both must report their buffers (ALSA does):
/// the delay is measured from the sample leaving the speaker.
pub fn echo_test(
    mic: &mut dyn AudioSource,
    speaker: &mut dyn AudioSink,
) -> Result<Result<EchoMeasurement, EchoFault>, AudioError> {
    let played = echo_probe::probe_signal();
    // Two frames of silence first start the speaker (its start threshold).
    let lead = 2 * FRAME_SAMPLES;
    let mut stream = vec![0i16; lead];
    stream.extend_from_slice(&played);
    let silence = [0i16; FRAME_SAMPLES];
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut recording = Vec::with_capacity(stream.len() + 2 * echo_probe::MAX_DELAY);
    let mut offsets = Vec::new();
    let mut written = 0usize;
    // Bounded: the stream, the longest delay and a second for the buffers.
    let frames = (stream.len() + echo_probe::MAX_DELAY) / FRAME_SAMPLES + 50;
    for _ in 0..frames {
        mic.read(&mut frame)?;
        recording.extend_from_slice(&frame);
        let next = stream
            .get(written..written + FRAME_SAMPLES)
            .unwrap_or(&silence);
        speaker.write(next)?;
        written += FRAME_SAMPLES;
        if let (Some(dc), Some(dp)) = (mic.delay_samples(), speaker.delay_samples()) {
            // The recording's sample at which the stream's first one played.
            offsets.push(recording.len() as i64 + dc + dp - written as i64);
        }
    }
    offsets.sort_unstable();
    let offset = offsets
        .get(offsets.len() / 2)
        .map_or(0, |&o| (o + lead as i64).max(0) as usize);
    if offsets.is_empty() {
        log::warn!("echo test: the devices do not report their buffers; the delay includes them");
    }
    Ok(echo_probe::analyse(&played, &recording, offset))
}

/// `callbox audio loop`: what `from` captures comes out of `to` after
/// `line`'s delay, for `seconds` (or for ever). Returns the path's delay
/// as it stood (median, samples).
pub fn loop_path(
    from: &mut dyn AudioSource,
    to: &mut dyn AudioSink,
    line: &mut DelayLine,
    seconds: Option<u64>,
) -> Result<usize, AudioError> {
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut totals = Vec::new();
    let frames = seconds.map_or(u64::MAX, |s| s * 1000 / FRAME_MS);
    for i in 0..frames {
        from.read(&mut frame)?;
        line.push(&frame);
        let buffered = from.delay_samples().unwrap_or(0) + to.delay_samples().unwrap_or(0);
        let total = line.hold(buffered.max(0) as usize);
        if totals.len() < 3000 {
            totals.push(total);
        }
        if i % 250 == 0 {
            log::info!(
                "audio loop: path delay {:.1} ms ({} ms in the devices), {} correction(s)",
                total as f64 / 48.0,
                buffered / 48,
                line.corrections
            );
        }
        // Keep about two frames queued at the speaker; the rest waits here.
        while to.delay_samples().unwrap_or(0) < 2 * FRAME_SAMPLES as i64 && line.pop(&mut frame) {
            to.write(&frame)?;
        }
    }
    totals.sort_unstable();
    Ok(totals.get(totals.len() / 2).copied().unwrap_or(0))
}
