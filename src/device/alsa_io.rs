//! ALSA capture and playback (`alsa` crate over libasound): 48 kHz S16,
//! 20 ms periods, mono (or the first channels of a device that insists on
//! stereo). xruns and underruns are recovered with `snd_pcm_recover` and
//! counted; they are never fatal.

use crate::device::audio::{AudioError, AudioSink, AudioSource, FRAME_SAMPLES, SAMPLE_RATE};
use crate::device::stats::{add, MediaStats};
use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use std::sync::Arc;

struct Pcm {
    pcm: PCM,
    device: String,
    channels: usize,
    scratch: Vec<i16>,
}

fn open(device: &str, dir: Direction) -> Result<Pcm, AudioError> {
    let err = |what| {
        let device = device.to_owned();
        move |source| AudioError::Alsa {
            device,
            what,
            source,
        }
    };
    let pcm = PCM::new(device, dir, false).map_err(err("cannot open"))?;
    let channels = {
        let hw = HwParams::any(&pcm).map_err(err("hardware parameters"))?;
        hw.set_access(Access::RWInterleaved)
            .map_err(err("interleaved access"))?;
        hw.set_format(Format::s16())
            .map_err(err("16-bit samples"))?;
        hw.set_rate(SAMPLE_RATE, ValueOr::Nearest)
            .map_err(err("48 kHz"))?;
        let channels = hw.set_channels_near(1).map_err(err("channels"))?;
        hw.set_period_size_near(FRAME_SAMPLES as alsa::pcm::Frames, ValueOr::Nearest)
            .map_err(err("20 ms period"))?;
        // The speaker's buffer is latency: four periods. The microphone's
        // is only headroom (it is read as soon as a period is there), so a
        // busy moment in the processing costs no overrun.
        let periods = if dir == Direction::Capture { 10 } else { 4 };
        hw.set_buffer_size_near(periods * FRAME_SAMPLES as alsa::pcm::Frames)
            .map_err(err("buffer size"))?;
        pcm.hw_params(&hw)
            .map_err(err("apply hardware parameters"))?;
        let rate = hw.get_rate().map_err(err("rate"))?;
        if rate != SAMPLE_RATE {
            return Err(AudioError::Alsa {
                device: device.to_owned(),
                what: "48 kHz (the device offers another rate; use a plughw: or default device)",
                source: alsa::Error::new("snd_pcm_hw_params_set_rate", libc::EINVAL),
            });
        }
        channels as usize
    };
    if dir == Direction::Playback {
        // Start once two periods are queued, so the first write does not underrun.
        let sw = pcm
            .sw_params_current()
            .map_err(err("software parameters"))?;
        sw.set_start_threshold(2 * FRAME_SAMPLES as alsa::pcm::Frames)
            .map_err(err("start threshold"))?;
        pcm.sw_params(&sw)
            .map_err(err("apply software parameters"))?;
    }
    pcm.prepare().map_err(err("prepare"))?;
    Ok(Pcm {
        pcm,
        device: device.to_owned(),
        channels,
        scratch: vec![0; FRAME_SAMPLES * channels],
    })
}

impl Pcm {
    /// Frames between the application and the converter (`snd_pcm_delay`).
    // snd_pcm_sframes_t is 32-bit on armv7: the conversion is not useless there.
    #[allow(clippy::useless_conversion)]
    fn delay(&self) -> Option<i64> {
        self.pcm.delay().ok().map(i64::from)
    }

    fn err(&self, what: &'static str) -> impl Fn(alsa::Error) -> AudioError + '_ {
        move |source| AudioError::Alsa {
            device: self.device.clone(),
            what,
            source,
        }
    }

    /// Recover from an xrun (counted in `counter`); only an unrecoverable state is an error.
    fn recover(
        &self,
        e: alsa::Error,
        counter: &std::sync::atomic::AtomicU64,
        what: &'static str,
    ) -> Result<(), AudioError> {
        add(counter, 1);
        log::warn!("ALSA {}: {e}; recovering", self.device);
        self.pcm.try_recover(e, true).map_err(self.err(what))
    }
}

/// Microphone on an ALSA PCM device (`default`, `hw:1,0`, `plughw:Loopback,1`, ...).
pub struct AlsaCapture {
    pcm: Pcm,
    stats: Arc<MediaStats>,
}

impl AlsaCapture {
    pub fn open(device: &str, stats: Arc<MediaStats>) -> Result<Self, AudioError> {
        let pcm = open(device, Direction::Capture)?;
        pcm.pcm.start().ok();
        Ok(AlsaCapture { pcm, stats })
    }
}

impl AudioSource for AlsaCapture {
    fn read(&mut self, frame: &mut [i16]) -> Result<(), AudioError> {
        let p = &mut self.pcm;
        let io = p.pcm.io_i16().map_err(p.err("sample format"))?;
        let mut got = 0;
        while got < FRAME_SAMPLES {
            match io.readi(&mut p.scratch[got * p.channels..]) {
                Ok(n) => got += n,
                Err(e) => {
                    p.recover(e, &self.stats.capture_xruns, "recover from overrun")?;
                    p.pcm.start().ok();
                }
            }
        }
        for (i, s) in frame.iter_mut().enumerate().take(FRAME_SAMPLES) {
            *s = p.scratch[i * p.channels];
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "ALSA capture {} ({} ch)",
            self.pcm.device, self.pcm.channels
        )
    }

    fn delay_samples(&self) -> Option<i64> {
        self.pcm.delay()
    }
}

/// Speaker on an ALSA PCM device.
pub struct AlsaPlayback {
    pcm: Pcm,
    stats: Arc<MediaStats>,
}

impl AlsaPlayback {
    pub fn open(device: &str, stats: Arc<MediaStats>) -> Result<Self, AudioError> {
        Ok(AlsaPlayback {
            pcm: open(device, Direction::Playback)?,
            stats,
        })
    }
}

impl AudioSink for AlsaPlayback {
    fn write(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        let p = &mut self.pcm;
        for (i, &s) in frame.iter().enumerate().take(FRAME_SAMPLES) {
            p.scratch[i * p.channels..(i + 1) * p.channels].fill(s);
        }
        let io = p.pcm.io_i16().map_err(p.err("sample format"))?;
        let mut done = 0;
        while done < FRAME_SAMPLES {
            match io.writei(&p.scratch[done * p.channels..]) {
                Ok(n) => done += n,
                Err(e) => {
                    p.recover(e, &self.stats.playback_underruns, "recover from underrun")?;
                }
            }
        }
        Ok(())
    }

    fn delay_samples(&self) -> Option<i64> {
        self.pcm.delay()
    }

    fn describe(&self) -> String {
        format!(
            "ALSA playback {} ({} ch)",
            self.pcm.device, self.pcm.channels
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_a_clear_error_naming_it() {
        let stats = Arc::new(MediaStats::default());
        let err = AlsaCapture::open("hw:CARD=NoSuchCard,DEV=0", Arc::clone(&stats))
            .err()
            .expect("no such card here");
        let s = err.to_string();
        assert!(
            s.contains("hw:CARD=NoSuchCard,DEV=0") && s.contains("cannot open"),
            "{s}"
        );
        let err = AlsaPlayback::open("hw:CARD=NoSuchCard,DEV=0", stats)
            .err()
            .unwrap();
        assert!(err.to_string().contains("NoSuchCard"), "{err}");
    }
}
