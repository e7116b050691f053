//! Which instruction-set level the block encoders run at.
//!
//! Each encoder is compiled once per level (the `encoder!` macro in the parent module) from the same
//! source, so every level performs the same IEEE operations in the same order and writes the same
//! bytes; only the vector width the compiler may use differs. Rust never contracts `a * b + c` into
//! a fused multiply-add, so levels whose instruction sets include FMA stay exact too.

use std::sync::OnceLock;

/// An instruction-set level for [`quantize_with`](super::quantize_with); [`quantize`](super::quantize)
/// runs the highest this CPU has, capped by `OLLAMA_TOOLS_SIMD`. Every level writes the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Simd {
    /// The build's baseline target (SSE2 on x86-64): runs everywhere.
    Scalar,
    /// x86-64 with AVX2 (256-bit vectors).
    Avx2,
    /// x86-64 with AVX-512 F, BW, VL and DQ (512-bit vectors, mask registers).
    Avx512,
}

/// The environment variable that caps the level, read once: `scalar`, `avx2` or `avx512`.
pub(crate) const ENV: &str = "OLLAMA_TOOLS_SIMD";

impl Simd {
    /// Every level, lowest first.
    pub(crate) const ALL: [Simd; 3] = [Simd::Scalar, Simd::Avx2, Simd::Avx512];

    /// The name `OLLAMA_TOOLS_SIMD` takes.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    fn from_name(s: &str) -> Option<Simd> {
        Simd::ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the level.
    pub(crate) fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Simd::Scalar => true,
                Simd::Avx2 => has!("avx2"),
                Simd::Avx512 => has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Simd::Scalar
        }
    }

    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<Simd> {
        Simd::ALL.into_iter().filter(|l| l.supported()).collect()
    }

    /// The highest level this CPU can run.
    pub(crate) fn best() -> Simd {
        Simd::ALL
            .into_iter()
            .rev()
            .find(|l| l.supported())
            .unwrap_or(Simd::Scalar)
    }

    /// The level [`quantize`](super::quantize) uses: the best one, capped by `OLLAMA_TOOLS_SIMD` when
    /// that names a level (a level above what the CPU has gives the best it has). Read once.
    pub(crate) fn current() -> Simd {
        static LEVEL: OnceLock<Simd> = OnceLock::new();
        *LEVEL.get_or_init(|| capped(std::env::var(ENV).ok().as_deref()))
    }
}

/// The best level, capped by the value of `OLLAMA_TOOLS_SIMD` (unset, empty or not a level's name:
/// no cap; the variable is a diagnostic aid, every level writes the same bytes, and the library
/// does not print).
fn capped(var: Option<&str>) -> Simd {
    let best = Simd::best();
    var.and_then(Simd::from_name).map_or(best, |cap| cap.min(best))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_caps_the_level() {
        let best = Simd::best();
        assert_eq!(capped(None), best);
        assert_eq!(capped(Some("")), best);
        assert_eq!(capped(Some("scalar")), Simd::Scalar);
        assert_eq!(capped(Some(" AVX2 ")), Simd::Avx2.min(best));
        assert_eq!(capped(Some("avx512")), best);
        assert_eq!(capped(Some("sse9")), best);
        assert!(Simd::available().contains(&Simd::Scalar));
        assert!(Simd::available().iter().all(|l| l.supported() && *l <= best));
    }
}
