//! What the kernel says about DRM cards, from sysfs (`/sys/class/drm`):
//! each card, its driver, its connectors with their status and modes. For
//! `callbox probe`, and for checking `[display]` against the board before
//! the daemon starts: a connector name that is not there or a mode the
//! screen does not offer is a config error; a card or a screen not there
//! (yet) is not, it is retried at run time.

use serde::Serialize;
use std::path::{Path, PathBuf};

pub const SYSFS: &str = "/sys/class/drm";

/// A DRM card and its connectors, as sysfs describes them.
#[derive(Debug, Serialize, PartialEq)]
pub struct DrmCard {
    pub path: String,
    pub driver: String,
    pub connectors: Vec<DrmConnector>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DrmConnector {
    /// As the config names it (`HDMI-A-1`, `Virtual-1`).
    pub name: String,
    /// `connected`, `disconnected` or `unknown`.
    pub status: String,
    /// The modes it offers, preferred first (`1920x1080`).
    pub modes: Vec<String>,
}

/// DRM cards under `sysfs` (`/sys/class/drm`): `cardN` with its driver,
/// and its `cardN-NAME` connectors with status and modes.
pub fn cards(sysfs: &Path) -> Vec<DrmCard> {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(sysfs) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let cards = names.iter().filter(|n| {
        n.strip_prefix("card")
            .is_some_and(|d| d.parse::<u32>().is_ok())
    });
    cards
        .map(|card| {
            let driver = std::fs::read_link(sysfs.join(card).join("device/driver"))
                .ok()
                .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let prefix = format!("{card}-");
            let connectors = names
                .iter()
                .filter_map(|n| Some((n, n.strip_prefix(&prefix)?)))
                .map(|(dir, name)| DrmConnector {
                    name: name.to_owned(),
                    status: read(sysfs.join(dir).join("status")).trim().to_owned(),
                    modes: read(sysfs.join(dir).join("modes"))
                        .lines()
                        .map(str::to_owned)
                        .collect(),
                })
                .collect();
            DrmCard {
                path: format!("/dev/dri/{card}"),
                driver,
                connectors,
            }
        })
        .collect()
}

/// Why `[display]` does not fit the board: the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Mismatch {
    pub key: &'static str,
    pub reason: String,
}

/// Check `connector` and `mode` against what `cards` have, when the card
/// they are on is there: the card `device` names, else the first with a
/// connected connector.
pub fn check(
    cards: &[DrmCard],
    device: Option<&Path>,
    connector: Option<&str>,
    mode: Option<(u16, u16)>,
) -> Result<(), Mismatch> {
    let card = match device {
        Some(d) => cards.iter().find(|c| Path::new(&c.path) == d),
        None => cards
            .iter()
            .find(|c| c.connectors.iter().any(|k| k.status == "connected")),
    };
    let Some(card) = card else {
        return Ok(());
    };
    let names = || {
        let n: Vec<&str> = card.connectors.iter().map(|k| k.name.as_str()).collect();
        n.join(", ")
    };
    let con =
        match connector {
            Some(name) => Some(card.connectors.iter().find(|k| k.name == name).ok_or_else(
                || Mismatch {
                    key: "display.connector",
                    reason: format!(
                        "{} has no connector {name} (it has: {})",
                        card.path,
                        names()
                    ),
                },
            )?),
            None => card.connectors.iter().find(|k| k.status == "connected"),
        };
    let (Some(con), Some((w, h))) = (con, mode) else {
        return Ok(());
    };
    let want = format!("{w}x{h}");
    // A screen not plugged in lists no modes: nothing to check yet.
    if con.modes.is_empty() || con.modes.iter().any(|m| m.split('i').next() == Some(&want)) {
        return Ok(());
    }
    Err(Mismatch {
        key: "display.mode",
        reason: format!(
            "{} {} does not offer {want} (it offers: {})",
            card.path,
            con.name,
            con.modes.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drm_cards_and_connectors_are_read_from_sysfs() {
        let root = std::env::temp_dir().join(format!("callbox-drm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let conn = root.join("card0-Virtual-1");
        std::fs::create_dir_all(&conn).expect("dirs");
        std::fs::create_dir_all(root.join("card0")).expect("dirs");
        std::fs::create_dir_all(root.join("renderD128")).expect("dirs");
        std::fs::write(conn.join("status"), "connected\n").expect("status");
        std::fs::write(conn.join("modes"), "1024x768\n800x600\n").expect("modes");
        let found = cards(&root);
        assert_eq!(
            found,
            vec![DrmCard {
                path: "/dev/dri/card0".into(),
                driver: String::new(),
                connectors: vec![DrmConnector {
                    name: "Virtual-1".into(),
                    status: "connected".into(),
                    modes: vec!["1024x768".into(), "800x600".into()],
                }],
            }]
        );
        assert!(cards(&root.join("absent")).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_connector_or_mode_the_board_lacks_is_named() {
        let cards = vec![DrmCard {
            path: "/dev/dri/card0".into(),
            driver: "bochs-drm".into(),
            connectors: vec![DrmConnector {
                name: "Virtual-1".into(),
                status: "connected".into(),
                modes: vec!["1024x768".into(), "640x480".into()],
            }],
        }];
        assert_eq!(
            check(&cards, None, Some("Virtual-1"), Some((640, 480))),
            Ok(())
        );
        assert_eq!(check(&cards, None, None, None), Ok(()));
        let e = check(&cards, None, Some("HDMI-A-1"), None).unwrap_err();
        assert_eq!(e.key, "display.connector");
        let e = check(&cards, None, None, Some((1920, 1080))).unwrap_err();
        assert_eq!(e.key, "display.mode");
        // No such card (yet): retried at run time, not a config error.
        let elsewhere = Some(Path::new("/dev/dri/card1"));
        assert_eq!(check(&cards, elsewhere, Some("HDMI-A-1"), None), Ok(()));
        assert_eq!(check(&[], None, Some("HDMI-A-1"), Some((1, 1))), Ok(()));
    }
}
