//! `callbox audio process`: the device's processing chain on recordings,
//! for integrators tuning an enclosure (WebRTC's `audioproc_f` is the
//! model). Reads what the speaker played (`--far`) and what the microphone
//! heard (`--mic`), both 48 kHz mono 16-bit WAV of the same length, runs
//! exactly [`processing::process_recording`], writes the result in the same
//! format and length, and reports the canceller's delay and ERLE.

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
