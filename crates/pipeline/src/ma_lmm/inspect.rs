//! `videollama inspect --model DIR` for MA-LMM: what `model_config.yaml` says and which of the
//! files it names are present, without loading any weights.

use super::config::ModelConfigFile;
use crate::error::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One file the config names.
#[derive(Debug, Clone, Serialize)]
pub struct NamedFile {
    pub key: &'static str,
    pub path: PathBuf,
    pub present: bool,
}

/// The summary `inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct MaLmmInspect {
    pub config: PathBuf,
    pub arch: Option<String>,
    pub image_size: usize,
    pub num_query_token: usize,
    pub memory_bank_length: usize,
    pub num_frames: usize,
    pub max_num_frames: usize,
    pub max_txt_len: usize,
    pub prompt_template: String,
    pub vit_num_heads: Option<usize>,
    pub files: Vec<NamedFile>,
}

pub fn inspect(config: &Path, options: &[String]) -> Result<MaLmmInspect> {
    let cfg = ModelConfigFile::from_file(config, options)?;
    let m = &cfg.model;
    let mut files = Vec::new();
    let mut add = |key: &'static str, rel: &str| {
        let path = cfg.resolve(rel);
        files.push(NamedFile {
            present: path.exists(),
            key,
            path,
        });
    };
    add("vit_model_path", &m.vit_model_path);
    if let Some(f) = &m.finetuned {
        add("finetuned", f);
    }
    add("llm_model", &m.llm_model);
    add("bert_model", &m.bert_model);
    add("llm_pad_row", super::PAD_ROW_FILE);
    Ok(MaLmmInspect {
        config: cfg.path.clone(),
        arch: m.arch.clone(),
        image_size: m.image_size,
        num_query_token: m.num_query_token,
        memory_bank_length: m.memory_bank_length,
        num_frames: m.num_frames,
        max_num_frames: m.max_num_frames,
        max_txt_len: m.max_txt_len,
        prompt_template: cfg.template().to_string(),
        vit_num_heads: m.vit_num_heads,
        files,
    })
}
