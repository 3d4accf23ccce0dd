//! `--config FILE.toml` plus `--set key=value` overrides, deserialised into a stage config.
//! Keys are dotted paths (`train.lr=1e-5`); a value is read as TOML (number, bool, array,
//! quoted string) and falls back on a bare string.
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

pub fn load<T: DeserializeOwned>(path: &Path, sets: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: toml::Value =
        text.parse::<toml::Table>().map(toml::Value::Table).with_context(|| format!("{}: invalid TOML", path.display()))?;
    for s in sets {
        apply_set(&mut value, s)?;
    }
    T::deserialize(value).with_context(|| format!("{}: invalid config", path.display()))
}

/// Applies one `key.path=value` override.
pub fn apply_set(root: &mut toml::Value, set: &str) -> Result<()> {
    let Some((key, raw)) = set.split_once('=') else { bail!("--set {set:?}: expected key=value") };
    let parsed: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let table = cur.as_table_mut().with_context(|| format!("--set {key}: {} is not a table", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), parsed);
            return Ok(());
        }
        cur = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_values_with_types() {
        let mut v = toml::Value::Table("a = 1\n[train]\nlr = 2e-5\n".parse().unwrap());
        apply_set(&mut v, "train.lr=1e-6").unwrap();
        apply_set(&mut v, "train.device=cpu").unwrap();
        apply_set(&mut v, "new.flag=true").unwrap();
        assert_eq!(v["train"]["lr"].as_float(), Some(1e-6));
        assert_eq!(v["train"]["device"].as_str(), Some("cpu"));
        assert_eq!(v["new"]["flag"].as_bool(), Some(true));
        assert!(apply_set(&mut v, "a.b=1").is_err());
        assert!(apply_set(&mut v, "novalue").is_err());
    }
}
