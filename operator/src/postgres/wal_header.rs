//! The long page header at the start of every WAL segment: which cluster wrote it, its
//! segment size, and where in the WAL the segment sits. Lets WAL files be checked against
//! the archive they go into without a database connection.

/// `XLP_LONG_HEADER` in `xlp_info`: the page starts a segment and has the long header.
const XLP_LONG_HEADER: u16 = 0x0002;

/// Bytes of the long page header that are read.
pub const LONG_HEADER_LEN: usize = 40;

/// The long page header of a WAL segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSegmentHeader {
    /// `xlp_magic`: the WAL format version of the major release that wrote it.
    pub magic: u16,
    /// Timeline of the first page.
    pub timeline: u32,
    /// WAL location of the first page (the segment's start).
    pub page_address: u64,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// WAL segment size in bytes.
    pub segment_size: u64,
    /// WAL page size in bytes.
    pub block_size: u64,
}

impl WalSegmentHeader {
    /// Reads the header from the first bytes of a segment; `None` when they are not one
    /// (e.g. a segment whose first page has not been written yet).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let u16_at = |i: usize| Some(u16::from_le_bytes(bytes.get(i..i + 2)?.try_into().ok()?));
        let u32_at = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
        let u64_at = |i: usize| Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        let magic = u16_at(0)?;
        let info = u16_at(2)?;
        let segment_size = u64::from(u32_at(32)?);
        let block_size = u64::from(u32_at(36)?);
        let plausible = magic != 0
            && info & XLP_LONG_HEADER != 0
            && segment_size.is_power_of_two()
            && (1 << 20..=1 << 30).contains(&segment_size)
            && block_size.is_power_of_two()
            && (1 << 10..=1 << 16).contains(&block_size);
        plausible.then_some(())?;
        Some(Self {
            magic,
            timeline: u32_at(4)?,
            page_address: u64_at(8)?,
            system_identifier: u64_at(24)?,
            segment_size,
            block_size,
        })
    }
}

/// The long header of the WAL file at `path`, `None` for a file without one (a history
/// file, or a segment whose first page is not written yet).
pub async fn read_wal_header(path: &std::path::Path) -> std::io::Result<Option<WalSegmentHeader>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::with_capacity(LONG_HEADER_LEN);
    file.take(LONG_HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .await?;
    Ok(WalSegmentHeader::parse(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_long_header() {
        let mut page = [0u8; LONG_HEADER_LEN];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&0x3000000u64.to_le_bytes());
        page[24..32].copy_from_slice(&7310450979226025411u64.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let header = WalSegmentHeader::parse(&page).expect("header");
        assert_eq!(header.page_address, 0x3000000);
        assert_eq!(header.system_identifier, 7310450979226025411);
        assert_eq!(header.segment_size, 16 << 20);
        assert_eq!(WalSegmentHeader::parse(&[0u8; LONG_HEADER_LEN]), None);
        assert_eq!(WalSegmentHeader::parse(&page[..20]), None);
    }
}
