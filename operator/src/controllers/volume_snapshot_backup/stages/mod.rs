//! The stages of a VolumeSnapshotBackup (pure): what each does with what was observed, one
//! file per stage. The shared pieces (conditions, completion, failure) are in [`super::next`].

mod preparing;
mod recording;
mod releasing;
mod rolling_back;
mod snapshotting;
