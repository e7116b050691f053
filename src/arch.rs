//! Architecture tables: which Hugging Face module becomes which GGUF tensor, per llama.cpp
//! architecture (`general.architecture`), and which layout changes llama.cpp's own model converter
//! makes that a LoRA must follow.
//!
//! Checked against llama.cpp's tensor map (`gguf-py/gguf/tensor_mapping.py`) and its model
//! converter: every supported architecture names its per-layer tensors `blk.{i}.{stem}.weight`.

/// One architecture llama.cpp runs and we can write adapters for.
#[derive(Debug)]
pub struct Arch {
    /// `general.architecture` in GGUF.
    pub name: &'static str,
    /// Hugging Face `config.json` `model_type` values that llama.cpp's converter turns into this
    /// architecture (Mistral becomes `llama`).
    pub hf_model_types: &'static [&'static str],
    /// The models it covers, for messages and docs.
    pub models: &'static str,
    /// HF module name inside a decoder layer -> GGUF tensor stem inside `blk.{i}.`.
    pub layer_modules: &'static [(&'static str, &'static str)],
    /// llama.cpp's `llama` converter interleaves the rows of q_proj/k_proj per head for its RoPE
    /// (see [`permute_rows`]); LoRA must do the same to lora_B.
    pub permute_qk: bool,
}

const STANDARD: &[(&str, &str)] = &[
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
    ("gate_proj", "ffn_gate"),
    ("up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
];

/// Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; llama.cpp keeps both fused
/// (`attn_qkv`; `ffn_up` of twice the width, gate first), so the LoRA maps one to one.
const PHI3: &[(&str, &str)] =
    &[("qkv_proj", "attn_qkv"), ("o_proj", "attn_output"), ("gate_up_proj", "ffn_up"), ("down_proj", "ffn_down")];

pub const ARCHS: &[Arch] = &[
    Arch {
        name: "llama",
        hf_model_types: &["llama", "mistral"],
        models: "Llama 2/3/3.1/3.2/3.3, TinyLlama, CodeLlama, Mistral 7B, Mistral Nemo",
        layer_modules: STANDARD,
        permute_qk: true,
    },
    Arch { name: "qwen2", hf_model_types: &["qwen2"], models: "Qwen2, Qwen2.5", layer_modules: STANDARD, permute_qk: false },
    Arch { name: "qwen3", hf_model_types: &["qwen3"], models: "Qwen3 (dense)", layer_modules: STANDARD, permute_qk: false },
    Arch { name: "gemma", hf_model_types: &["gemma"], models: "Gemma", layer_modules: STANDARD, permute_qk: false },
    Arch { name: "gemma2", hf_model_types: &["gemma2"], models: "Gemma 2", layer_modules: STANDARD, permute_qk: false },
    Arch {
        name: "gemma3",
        hf_model_types: &["gemma3", "gemma3_text"],
        models: "Gemma 3 (text)",
        layer_modules: STANDARD,
        permute_qk: false,
    },
    Arch { name: "phi3", hf_model_types: &["phi3"], models: "Phi-3, Phi-3.5", layer_modules: PHI3, permute_qk: false },
];

/// The table entry for a GGUF architecture name.
pub fn by_name(name: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name)
}

/// The table entry for a Hugging Face `model_type`.
pub fn by_hf_model_type(model_type: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.hf_model_types.contains(&model_type))
}

/// "llama (Llama 2/3 ...), qwen2 (...)" for error messages.
pub fn supported_list() -> String {
    ARCHS.iter().map(|a| format!("{} ({})", a.name, a.models)).collect::<Vec<_>>().join(", ")
}

/// Where in the model a PEFT module sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    /// A module inside decoder layer `layer`, e.g. `self_attn.q_proj` -> `("q_proj")`.
    Layer { layer: u32, module: String },
    /// The input embedding (`embed_tokens`).
    Embedding,
    /// The output projection (`lm_head`).
    Output,
}

/// Prefixes under which the text decoder sits in the HF models we support: `model.` for
/// `*ForCausalLM`, `model.language_model.` / `language_model.model.` for Gemma 3 multimodal wrappers.
const DECODER_PREFIXES: &[&str] = &["model.language_model.", "language_model.model.", "model.", "language_model.", ""];

/// Finds the site of a PEFT module path (`model.layers.3.self_attn.q_proj`, without the
/// `base_model.model.` prefix). `None` for paths outside the text decoder (vision towers, GPT-2's
/// `transformer.h.N`, classifier heads).
pub fn site_of(module_path: &str) -> Option<Site> {
    if module_path == "lm_head" || module_path == "language_model.lm_head" {
        return Some(Site::Output);
    }
    for prefix in DECODER_PREFIXES {
        let Some(rest) = module_path.strip_prefix(prefix) else { continue };
        if rest == "embed_tokens" {
            return Some(Site::Embedding);
        }
        let parts: Vec<&str> = rest.split('.').collect();
        if let ["layers", idx, "self_attn" | "mlp", module] = parts[..] {
            if let Ok(layer) = idx.parse() {
                return Some(Site::Layer { layer, module: module.to_string() });
            }
        }
    }
    None
}

impl Arch {
    /// The GGUF base tensor a site maps to, or `None` when this architecture has no such module.
    pub fn tensor_name(&self, site: &Site) -> Option<String> {
        match site {
            Site::Embedding => Some("token_embd.weight".into()),
            Site::Output => Some("output.weight".into()),
            Site::Layer { layer, module } => {
                let stem = self.layer_modules.iter().find(|(m, _)| m == module)?.1;
                Some(format!("blk.{layer}.{stem}.weight"))
            }
        }
    }

    /// Whether lora_B of this tensor needs llama.cpp's Q/K row permutation, and with how many heads.
    pub fn row_permutation(&self, site: &Site, n_head: u64, n_head_kv: u64) -> Option<u64> {
        match site {
            Site::Layer { module, .. } if self.permute_qk && module == "q_proj" => Some(n_head),
            Site::Layer { module, .. } if self.permute_qk && module == "k_proj" => Some(n_head_kv),
            _ => None,
        }
    }
}

/// For llama.cpp's `llama` layout: which source row each output row takes. llama.cpp's converter views
/// the `[n_head * head_dim, in]` weight as `[n_head, 2, head_dim/2, in]` and swaps the two middle axes,
/// turning Hugging Face's rotate-half order into interleaved pairs. Returns `None` when the row count
/// does not split into `n_head` heads of even size.
pub fn permute_rows(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    if n_head == 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0 {
        return None;
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                // Output index h*head_dim + 2j + t holds input [h, t, j].
                src.push(h * head_dim + t * half + j);
            }
        }
    }
    Some(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_of_real_module_paths() {
        assert_eq!(site_of("model.layers.3.self_attn.q_proj"), Some(Site::Layer { layer: 3, module: "q_proj".into() }));
        assert_eq!(site_of("model.layers.0.mlp.down_proj"), Some(Site::Layer { layer: 0, module: "down_proj".into() }));
        assert_eq!(
            site_of("model.language_model.layers.7.self_attn.v_proj"),
            Some(Site::Layer { layer: 7, module: "v_proj".into() })
        );
        assert_eq!(site_of("model.embed_tokens"), Some(Site::Embedding));
        assert_eq!(site_of("lm_head"), Some(Site::Output));
        // Not the text decoder: a vision tower, GPT-2 blocks, a classifier.
        assert_eq!(site_of("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"), None);
        assert_eq!(site_of("transformer.h.0.attn.c_attn"), None);
        assert_eq!(site_of("score"), None);
    }

    #[test]
    fn tensor_names_per_arch() {
        let q = Site::Layer { layer: 2, module: "q_proj".into() };
        assert_eq!(by_name("llama").unwrap().tensor_name(&q).unwrap(), "blk.2.attn_q.weight");
        assert_eq!(by_name("phi3").unwrap().tensor_name(&q), None);
        let gu = Site::Layer { layer: 0, module: "gate_up_proj".into() };
        assert_eq!(by_name("phi3").unwrap().tensor_name(&gu).unwrap(), "blk.0.ffn_up.weight");
        assert_eq!(by_hf_model_type("mistral").unwrap().name, "llama");
        assert_eq!(by_hf_model_type("gemma3_text").unwrap().name, "gemma3");
        assert!(by_name("gpt2").is_none());
    }

    #[test]
    fn permutation_matches_the_numpy_reshape() {
        // Independent expectation written out by hand for 2 heads of head_dim 4:
        // rows [h0: a0 a1 b0 b1 | h1: c0 c1 d0 d1] (rotate-half halves a/b, c/d) become
        // [a0 b0 a1 b1 | c0 d0 c1 d1].
        assert_eq!(permute_rows(8, 2).unwrap(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_rows(6, 2), None);
        // One head of dim 6: halves [0 1 2] [3 4 5] interleave.
        assert_eq!(permute_rows(6, 1).unwrap(), vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn only_llama_permutes_and_with_kv_heads_for_k() {
        let llama = by_name("llama").unwrap();
        let k = Site::Layer { layer: 0, module: "k_proj".into() };
        let q = Site::Layer { layer: 0, module: "q_proj".into() };
        let v = Site::Layer { layer: 0, module: "v_proj".into() };
        assert_eq!(llama.row_permutation(&q, 32, 8), Some(32));
        assert_eq!(llama.row_permutation(&k, 32, 8), Some(8));
        assert_eq!(llama.row_permutation(&v, 32, 8), None);
        assert_eq!(by_name("qwen2").unwrap().row_permutation(&q, 32, 8), None);
    }
}
