//! Rejection sampling: best-of-K by reward (Llama 2 Section 3.2.3). Not built yet: see issue 6.
