//! How the library reports progress and asks questions without printing: the CLI implements
//! [`Progress`] with indicatif and dialoguer; tests and library users pass [`Silent`].

/// Where the library's progress, notices and questions go. Every method has a default that does
/// nothing (or answers "nobody can answer"), so an implementation overrides what it shows.
pub trait Progress: Sync {
    /// A new stage that will process `total` units (bytes, for conversions).
    fn stage(&self, _name: &str, _total: u64) {}
    /// `n` more units of the current stage are done.
    fn advance(&self, _n: u64) {}
    /// Something the user should read even when all goes well (a tensor kept in f32, a skipped tensor).
    fn notice(&self, _msg: &str) {}
    /// The current stage is over.
    fn finish(&self) {}
    /// A passing status from a server (Ollama's "writing manifest"): shown, not kept.
    fn status(&self, _msg: &str) {}
    /// Asks a yes/no question. `None` when nobody can answer (no terminal): the caller must then stop
    /// and say which option decides it (`--force`, `--yes`).
    fn confirm(&self, _question: &str, _default: bool) -> Option<bool> {
        None
    }
    /// Asks which of `items` to use; `None` when nobody can answer.
    fn choose(&self, _question: &str, _items: &[String]) -> Option<usize> {
        None
    }
    /// The user asked to stop (Ctrl-C): long operations check this between steps, stop, and remove
    /// what they had started writing.
    fn cancelled(&self) -> bool {
        false
    }
}

/// `Err(Cancelled)` once the user asked to stop: what long operations call between steps.
pub(crate) fn check_cancelled(progress: &dyn Progress) -> crate::Result<()> {
    if progress.cancelled() {
        Err(crate::Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
