//! Reading tar headers: ustar names with their prefix, octal and base-256 numbers, the
//! checksum, and the pax records kept (path and link).

pub(super) const BLOCK: usize = 512;

/// `size` rounded up to whole blocks.
pub(super) fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A header block.
pub(super) struct Header<'a>(pub(super) &'a [u8; BLOCK]);

impl Header<'_> {
    pub(super) fn kind(&self) -> u8 {
        self.0[156]
    }

    /// The name, with the ustar prefix when there is one.
    pub(super) fn name(&self) -> String {
        let name = self.text(0, 100);
        let ustar = &self.0[257..262] == b"ustar";
        let prefix = if ustar {
            self.text(345, 155)
        } else {
            String::new()
        };
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    }

    pub(super) fn text(&self, at: usize, len: usize) -> String {
        c_string(&self.0[at..at + len])
    }

    /// An octal number field (NUL- or space-terminated).
    pub(super) fn octal(&self, at: usize, len: usize) -> Option<u64> {
        let field = &self.0[at..at + len];
        let digits: String = field
            .iter()
            .skip_while(|&&b| b == b' ')
            .take_while(|&&b| (b'0'..=b'7').contains(&b))
            .map(|&b| char::from(b))
            .collect();
        if digits.is_empty() {
            return field.iter().all(|&b| b == 0 || b == b' ').then_some(0);
        }
        u64::from_str_radix(&digits, 8).ok()
    }

    /// The size: octal, or base-256 (the high bit of its first byte set) from 8 GiB.
    pub(super) fn size(&self) -> Option<u64> {
        let field = &self.0[124..136];
        if field[0] & 0x80 != 0 {
            let mut value: u64 = u64::from(field[0] & 0x7f);
            for &b in &field[1..] {
                value = value.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            return Some(value);
        }
        self.octal(124, 12)
    }

    /// The sum of the header's bytes with its checksum field taken as spaces.
    pub(super) fn checksum_ok(&self) -> bool {
        let Some(recorded) = self.octal(148, 8) else {
            return false;
        };
        let sum: u64 = self
            .0
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        sum == recorded
    }
}

pub(super) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The fields of a pax extended header kept here.
#[derive(Default)]
pub(super) struct Pax {
    pub(super) path: Option<String>,
    pub(super) link: Option<String>,
}

/// `<length> <key>=<value>\n` records.
pub(super) fn parse_pax(mut text: &[u8]) -> Pax {
    let mut pax = Pax::default();
    while let Some(space) = text.iter().position(|&b| b == b' ') {
        let Some(length) = std::str::from_utf8(&text[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > space && l <= text.len())
        else {
            break;
        };
        let record = &text[space + 1..length];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match &record[..eq] {
                b"path" => pax.path = Some(value),
                b"linkpath" => pax.link = Some(value),
                _ => {}
            }
        }
        text = &text[length..];
    }
    pax
}
