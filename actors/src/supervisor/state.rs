//! The restart policy: capped exponential backoff and a restart budget that resets after a
//! healthy period. Pure, so it is tested without a runtime.

use std::time::Duration;
use wtm_config::SupervisorConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Restart { after: Duration, generation: u32 },
    GiveUp { failures: u32 },
}

#[derive(Debug, Clone, Default)]
pub struct RestartBudget {
    /// Failures since the budget last reset.
    pub failures: u32,
    /// Restarts over the node's life (the generation counter).
    pub generation: u32,
    last_start_ms: i64,
}

impl RestartBudget {
    pub fn started(&mut self, now_ms: i64) {
        self.last_start_ms = now_ms;
    }

    pub fn on_failure(&mut self, cfg: &SupervisorConfig, now_ms: i64) -> Decision {
        if now_ms - self.last_start_ms >= cfg.healthy_after_s as i64 * 1000 {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > cfg.max_restarts {
            return Decision::GiveUp {
                failures: self.failures,
            };
        }
        self.generation += 1;
        let exp = cfg
            .backoff_initial_ms
            .saturating_mul(1u64 << (self.failures - 1).min(30));
        Decision::Restart {
            after: Duration::from_millis(exp.min(cfg.backoff_max_ms)),
            generation: self.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_gives_up_and_resets_when_healthy() {
        let cfg = SupervisorConfig {
            max_restarts: 4,
            healthy_after_s: 60,
            backoff_initial_ms: 100,
            backoff_max_ms: 300,
        };
        let mut b = RestartBudget::default();
        b.started(0);
        let delays: Vec<_> = (0..4)
            .map(|i| match b.on_failure(&cfg, 1_000 + i) {
                Decision::Restart { after, .. } => {
                    b.started(1_000 + i);
                    after.as_millis()
                }
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(delays, vec![100, 200, 300, 300]);
        assert_eq!(b.on_failure(&cfg, 1_010), Decision::GiveUp { failures: 5 });
        // After a healthy minute the budget is whole again.
        let mut b = RestartBudget::default();
        b.started(0);
        b.on_failure(&cfg, 10);
        b.started(10);
        b.on_failure(&cfg, 20);
        b.started(20);
        assert_eq!(
            b.on_failure(&cfg, 70_000),
            Decision::Restart {
                after: Duration::from_millis(100),
                generation: 3
            }
        );
    }
}
