//! H.264 Annex-B byte streams, as a capture program writes them to a
//! pipe, cut into access units (one picture each, with the parameter sets
//! and SEI before it). Pure. A new access unit starts at an access unit
//! delimiter, SPS, PPS or SEI that follows a picture's slices, or at a
//! slice that begins a new picture (`first_mb_in_slice` 0). A unit is
//! known complete only when the next one begins, so units leave one frame
//! late unless the stream ends. openh264 and the `h264-reader` crate parse
//! whole units; neither cuts a byte stream into them, so this does.

/// Largest access unit taken (a 1080p IDR is well under this).
pub const MAX_UNIT: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnexBError {
    #[error("an access unit over {MAX_UNIT} bytes: not H.264 Annex B, or a broken stream")]
    TooLarge,
}

#[derive(Debug, Default)]
pub struct AnnexBSplitter {
    /// Bytes not yet cut into NAL units (from the last start code on).
    pending: Vec<u8>,
    /// The access unit being gathered.
    unit: Vec<u8>,
    unit_has_picture: bool,
}

/// The offset of the first start code (`00 00 01`) at or after `from`.
fn start_code(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|p| p + from)
}

impl AnnexBSplitter {
    /// Take in bytes; every access unit completed by them goes to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Vec<u8>)) -> Result<(), AnnexBError> {
        self.pending.extend_from_slice(data);
        let Some(first) = start_code(&self.pending, 0) else {
            return self.bounded();
        };
        // A 4-byte start code's leading zero belongs to its unit.
        let mut at = if first > 0 && self.pending[first - 1] == 0 {
            first - 1
        } else {
            first
        };
        // Each NAL unit runs from its start code to the next one.
        while let Some(next) = start_code(&self.pending, at + 3) {
            // A 4-byte start code's leading zero belongs to the next unit.
            let end = if self.pending[next - 1] == 0 {
                next - 1
            } else {
                next
            };
            let nal = self.pending[at..end].to_vec();
            self.take_nal(&nal, out);
            at = end;
        }
        self.pending.drain(..at);
        self.bounded()
    }

    /// The stream ended: what is gathered is the last access unit.
    pub fn finish(&mut self, out: &mut impl FnMut(Vec<u8>)) {
        let rest = std::mem::take(&mut self.pending);
        if start_code(&rest, 0).is_some() {
            self.take_nal(&rest, out);
        }
        self.flush(out);
    }

    fn bounded(&mut self) -> Result<(), AnnexBError> {
        if self.pending.len() + self.unit.len() > MAX_UNIT {
            *self = AnnexBSplitter::default();
            return Err(AnnexBError::TooLarge);
        }
        Ok(())
    }

    /// One NAL unit with its start code.
    fn take_nal(&mut self, nal: &[u8], out: &mut impl FnMut(Vec<u8>)) {
        let Some(header) = start_code(nal, 0).map(|p| p + 3) else {
            return;
        };
        let Some(&h) = nal.get(header) else { return };
        let kind = h & 0x1f;
        let picture = matches!(kind, 1 | 5);
        // first_mb_in_slice is ue(v): 0 is the single bit 1.
        let new_picture = picture && nal.get(header + 1).is_some_and(|b| b & 0x80 != 0);
        let before_picture = matches!(kind, 6..=9 | 14..=18);
        if self.unit_has_picture && (new_picture || before_picture) {
            self.flush(out);
        }
        self.unit.extend_from_slice(nal);
        self.unit_has_picture |= picture;
    }

    fn flush(&mut self, out: &mut impl FnMut(Vec<u8>)) {
        if self.unit_has_picture {
            out(std::mem::take(&mut self.unit));
        }
        self.unit.clear();
        self.unit_has_picture = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f];
    const PPS: &[u8] = &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80];
    const IDR: &[u8] = &[0, 0, 1, 0x65, 0x88, 0x84, 0x21];
    const P: &[u8] = &[0, 0, 1, 0x41, 0x9a, 0x02, 0x03];
    /// A second slice of the same picture (first_mb_in_slice != 0).
    const P_SLICE_2: &[u8] = &[0, 0, 1, 0x41, 0x3a, 0x02, 0x03];

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = AnnexBSplitter::default();
        let mut units = Vec::new();
        for c in chunks {
            s.push(c, &mut |u| units.push(u)).unwrap();
        }
        s.finish(&mut |u| units.push(u));
        units
    }

    #[test]
    fn parameter_sets_go_with_the_idr_and_each_picture_is_one_unit() {
        let stream = [SPS, PPS, IDR, P, P_SLICE_2, P].concat();
        let units = split(&[&stream]);
        assert_eq!(units.len(), 3, "{units:?}");
        assert_eq!(units[0], [SPS, PPS, IDR].concat());
        assert_eq!(units[1], [P, P_SLICE_2].concat(), "two slices, one picture");
        assert_eq!(units[2], P);
    }

    #[test]
    fn chunk_boundaries_anywhere_give_the_same_units() {
        let stream = [SPS, PPS, IDR, P, P].concat();
        let whole = split(&[&stream]);
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(split(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split(&bytes), whole);
    }

    #[test]
    fn an_endless_stream_without_units_is_refused_not_buffered() {
        let mut s = AnnexBSplitter::default();
        let junk = vec![0x55u8; 1 << 20];
        let mut got = 0;
        let results: Vec<_> = (0..5).map(|_| s.push(&junk, &mut |_| got += 1)).collect();
        assert!(results.contains(&Err(AnnexBError::TooLarge)));
        assert_eq!(got, 0);
    }
}
