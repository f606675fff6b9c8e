//! Concurrency accounting, as Lambda does it: a host (account) limit of instances at once;
//! a function with a reservation of N may use at most N and is guaranteed N (the others share
//! what the reservations leave, the *unreserved* concurrency); provisioned instances count
//! inside their function's share whether busy or idle.
//!
//! What a function uses is its pinned (provisioned) instances plus its invocations in flight
//! on other instances (booting or running). An invocation that takes an idle provisioned
//! instance uses nothing more; any other must be admitted first. Pure bookkeeping: the pool
//! calls it under its lock.

use std::collections::HashMap;

/// Why an invocation was throttled: Lambda's `Reason` of the 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttle {
    /// The function is at its reserved concurrency.
    Reserved,
    /// The functions without a reservation are at the unreserved concurrency.
    Account,
}

impl Throttle {
    /// Lambda's `Reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Throttle::Reserved => "ReservedFunctionConcurrentInvocationLimitExceeded",
            Throttle::Account => "ConcurrentInvocationLimitExceeded",
        }
    }
}

/// What each function uses, against the host's limit and the reservations.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Instances at once on the host.
    host: u32,
    /// Reservations by function.
    reserved: HashMap<String, u32>,
    /// The sum of the reservations.
    reserved_total: u32,
    /// What each function uses (pinned instances and invocations in flight).
    in_use: HashMap<String, u32>,
    /// What the functions without a reservation use together.
    unreserved_in_use: u32,
}

impl Accounting {
    /// Nothing in use, no reservations, `host` instances at once.
    pub fn new(host: u32) -> Accounting {
        Accounting { host, ..Accounting::default() }
    }

    /// The concurrency the functions without a reservation share.
    pub fn unreserved(&self) -> u32 {
        self.host.saturating_sub(self.reserved_total)
    }

    /// The host's limit.
    pub fn host(&self) -> u32 {
        self.host
    }

    /// The most `function` may use at once: its reservation, or else the unreserved
    /// concurrency (which it shares).
    pub fn share(&self, function: &str) -> u32 {
        self.reserved.get(function).copied().unwrap_or_else(|| self.unreserved())
    }

    /// What `function` uses now.
    pub fn in_use(&self, function: &str) -> u32 {
        self.in_use.get(function).copied().unwrap_or(0)
    }

    /// Sets (or removes) a function's reservation. What it uses moves between its own share
    /// and the unreserved one.
    pub fn set_reserved(&mut self, function: &str, reserved: Option<u32>) {
        let used = self.in_use(function);
        match self.reserved.remove(function) {
            Some(old) => self.reserved_total -= old,
            None => self.unreserved_in_use -= used,
        }
        match reserved {
            Some(n) => {
                self.reserved.insert(function.to_owned(), n);
                self.reserved_total += n;
            }
            None => self.unreserved_in_use += used,
        }
    }

    /// Counts one more instance or invocation for `function` if its share has room.
    pub fn admit(&mut self, function: &str) -> Result<(), Throttle> {
        match self.reserved.get(function) {
            Some(&n) if self.in_use(function) >= n => return Err(Throttle::Reserved),
            Some(_) => {}
            None if self.unreserved_in_use >= self.unreserved() => return Err(Throttle::Account),
            None => self.unreserved_in_use += 1,
        }
        *self.in_use.entry(function.to_owned()).or_default() += 1;
        Ok(())
    }

    /// Counts one more for `function` whether or not its share has room (a provisioned
    /// instance, whose number was checked when it was configured).
    pub fn add(&mut self, function: &str) {
        if !self.reserved.contains_key(function) {
            self.unreserved_in_use += 1;
        }
        *self.in_use.entry(function.to_owned()).or_default() += 1;
    }

    /// Counts one fewer for `function`.
    pub fn release(&mut self, function: &str) {
        let Some(used) = self.in_use.get_mut(function).filter(|n| **n > 0) else { return };
        *used -= 1;
        if *used == 0 {
            self.in_use.remove(function);
        }
        if !self.reserved.contains_key(function) {
            self.unreserved_in_use = self.unreserved_in_use.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_caps_its_function_and_keeps_room_for_it() {
        let mut a = Accounting::new(10);
        a.set_reserved("r", Some(3));
        assert_eq!(a.unreserved(), 7);
        for _ in 0..3 {
            a.admit("r").unwrap();
        }
        assert_eq!(a.admit("r"), Err(Throttle::Reserved));
        // The others share 7, however busy "r" is.
        for i in 0..7 {
            a.admit(if i % 2 == 0 { "x" } else { "y" }).unwrap();
        }
        assert_eq!(a.admit("x"), Err(Throttle::Account));
        assert_eq!(a.admit("z"), Err(Throttle::Account));
        a.release("r");
        a.admit("r").unwrap();
        a.release("y");
        a.admit("z").unwrap();
        assert_eq!((a.in_use("r"), a.in_use("x"), a.in_use("y"), a.in_use("z")), (3, 4, 2, 1));
    }

    #[test]
    fn a_reservation_of_zero_throttles_everything() {
        let mut a = Accounting::new(4);
        a.set_reserved("off", Some(0));
        assert_eq!(a.admit("off"), Err(Throttle::Reserved));
        assert_eq!(a.unreserved(), 4);
    }

    #[test]
    fn provisioned_instances_count_inside_the_share() {
        let mut a = Accounting::new(5);
        a.set_reserved("p", Some(2));
        a.add("p");
        a.admit("p").unwrap();
        assert_eq!(a.admit("p"), Err(Throttle::Reserved));
        // Without a reservation, pinned instances use the unreserved share.
        a.add("q");
        a.add("q");
        a.admit("s").unwrap();
        assert_eq!(a.admit("s"), Err(Throttle::Account));
    }

    #[test]
    fn changing_a_reservation_moves_what_is_in_use() {
        let mut a = Accounting::new(6);
        a.admit("f").unwrap();
        a.admit("f").unwrap();
        a.admit("g").unwrap();
        a.set_reserved("f", Some(2));
        // f's two moved out of the unreserved share: g has 4 - 1 left.
        for _ in 0..3 {
            a.admit("g").unwrap();
        }
        assert_eq!(a.admit("g"), Err(Throttle::Account));
        assert_eq!(a.admit("f"), Err(Throttle::Reserved));
        a.set_reserved("f", None);
        assert_eq!(a.unreserved(), 6);
        // Back in the unreserved share: 2 + 4 = 6 in use, full.
        assert_eq!(a.admit("f"), Err(Throttle::Account));
        a.release("f");
        a.release("f");
        a.release("f"); // one too many: ignored
        assert_eq!(a.in_use("f"), 0);
        a.admit("h").unwrap();
        a.admit("h").unwrap();
        assert_eq!(a.admit("h"), Err(Throttle::Account));
    }
}
