"""Per-key limits shared by a fleet's gateways: the token buckets (requests/min, tokens/min) and
the concurrency slots of every key live in the store (store.py), updated atomically by scripts
that run inside it, so N gateways together admit what one would.

- A bucket is a hash {r, rc, t, tc, ts}: levels and capacities of the request and token buckets
  and when they were last updated, in the store's own clock (TIME), so the gateways' clocks do not
  matter. It expires when it would be full again: a full bucket is the same as none.
- A concurrency slot is a lease in a sorted set scored by its expiry; the gateway holding it
  renews it every lease_s/3 and removes it when the request ends. A gateway that dies frees its
  slots within lease_s.
- Reserve and settle follow limits.py: a request takes 1 request and its worst case of tokens;
  when it ends, the unused tokens go back (or the extra ones are taken).

While the store is unreachable each gateway admits 1/gateways of every limit by itself
(limits.KeyLimiter with that fraction), never more and never nothing; requests it admitted so are
counted in `local_admitted`.
"""

from __future__ import annotations

import asyncio
import uuid

from .auth import KeyRecord
from .config import LimitsSection
from .limits import KeyLimiter, Refusal, key_limits, rate_limited, too_large, too_many_in_flight
from .store import LimitsStore, StoreDown

# Brings the buckets in KEYS[1] to the store's now; `now` in ms, levels may be fractional.
_REFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(value, was, cap, stamp)
  if cap == 0 then return 0 end
  if not value then return cap end
  local lvl, old = tonumber(value), tonumber(was)
  if old ~= cap then
    if old == 0 then lvl = cap else lvl = cap - (old - lvl) end
  end
  lvl = lvl + (now - stamp) * cap / 60000
  if lvl > cap then return cap end
  return lvl
end
local function save(r, rpm, tk, tpm)
  redis.call('HSET', KEYS[1], 'r', tostring(r), 'rc', rpm, 't', tostring(tk), 'tc', tpm, 'ts', now)
  local full = 0
  if rpm > 0 then full = math.max(full, (rpm - r) * 60000 / rpm) end
  if tpm > 0 then full = math.max(full, (tpm - tk) * 60000 / tpm) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(full) + 1000)
end
local state = redis.call('HMGET', KEYS[1], 'r', 'rc', 't', 'tc', 'ts')
local stamp = tonumber(state[5]) or now
"""

# KEYS: bucket, leases. ARGV: rpm, tpm, concurrency, tokens, lease id, lease ms.
# Returns {1} when admitted, else {0, what, in flight, wait ms}.
RESERVE = _REFILL + """
local rpm, tpm, conc, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local r = level(state[1], state[2], rpm, stamp)
local tk = level(state[3], state[4], tpm, stamp)
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local active = redis.call('ZCARD', KEYS[2])
  if active >= conc then return {0, 'concurrency', active, 1000} end
end
local rwait, twait = 0, 0
if rpm > 0 and r < 1 then rwait = math.ceil((1 - r) * 60000 / rpm) end
if tpm > 0 and tk < want then twait = math.ceil((want - tk) * 60000 / tpm) end
if rwait > 0 or twait > 0 then
  if rwait >= twait then return {0, 'requests', 0, rwait} end
  return {0, 'tokens', 0, twait}
end
if rpm > 0 then r = r - 1 end
if tpm > 0 then tk = tk - want end
save(r, rpm, tk, tpm)
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]) * 2)
end
return {1}
"""

# KEYS: bucket, leases. ARGV: rpm, tpm, tokens to give back (negative: take), lease id ('' none).
SETTLE = _REFILL + """
local rpm, tpm, back = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
if tpm > 0 and back ~= 0 then
  local r = level(state[1], state[2], rpm, stamp)
  local tk = math.min(tpm, level(state[3], state[4], tpm, stamp) + back)
  save(r, rpm, tk, tpm)
end
return 1
"""

# KEYS: lease sets. ARGV: lease ms, then one lease id per key.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]) * 2)
end
return #KEYS
"""


class SharedReservation:
    """A request's share of its key's limits in the store; `settle` once, when the request is over."""

    def __init__(self, limiter: "SharedLimiter", key: KeyRecord, limits: tuple[int, int, int], tokens: int,
                 lease: str):
        self._limiter, self._key, self._limits, self.tokens, self._lease = limiter, key, limits, tokens, lease
        self._settled = False

    def settle(self, used_tokens: int) -> None:
        """Give back the unused tokens and the slot, in the background (no response waits for it)."""
        if self._settled:
            return
        self._settled = True
        self._limiter.release(self._key, self._limits, self.tokens - used_tokens, self._lease)


class _Unlimited:
    tokens = 0

    def settle(self, used_tokens: int) -> None:
        pass


class SharedLimiter:
    """Every key's limits in `store`, or 1/gateways of them here while the store does not answer."""

    def __init__(self, store: LimitsStore, defaults: LimitsSection):
        self.store, self._defaults = store, defaults
        self.local = KeyLimiter(defaults, fraction=store.local_fraction)
        self.local_admitted = 0  # requests admitted by the local fallback
        self._reserve = store.client.register_script(RESERVE)
        self._settle = store.client.register_script(SETTLE)
        self._renew = store.client.register_script(RENEW)
        self._leases: dict[str, str] = {}  # lease id -> key id, renewed while its request runs
        self._renewing: asyncio.Task | None = None
        self._lease_ms = int(store.section.lease_s * 1000)

    def _keys(self, key_id: str) -> list[str]:
        return [self.store.key("bucket", key_id), self.store.key("leases", key_id)]

    async def admit(self, key: KeyRecord, tokens: int):
        """Reserve one request and `tokens` tokens for `key` across the fleet, or say why not."""
        rpm, tpm, concurrency = limits = key_limits(key, self._defaults)
        if not (rpm or tpm or concurrency):
            return _Unlimited()
        if tpm and tokens > tpm:
            return too_large(tokens, tpm)
        if not self.store.up:
            return self._admit_locally(key, tokens)
        lease = uuid.uuid4().hex if concurrency else ""
        try:
            answer = await self.store.call(lambda client: self._reserve(
                keys=self._keys(key.key_id), args=[rpm, tpm, concurrency, tokens, lease, self._lease_ms],
                client=client))
        except StoreDown:
            return self._admit_locally(key, tokens)
        if answer[0] == 1:
            if lease:
                self._leases[lease] = key.key_id
                if self._renewing is None or self._renewing.done():
                    self._renewing = asyncio.ensure_future(self._renew_leases())
            return SharedReservation(self, key, limits, tokens, lease)
        what, active, wait_s = _text(answer[1]), int(answer[2]), int(answer[3]) / 1000
        if what == "concurrency":
            return too_many_in_flight(active, concurrency)
        return rate_limited(what, rpm if what == "requests" else tpm, wait_s)

    def _admit_locally(self, key: KeyRecord, tokens: int):
        reservation = self.local.reserve(key, tokens)
        if not isinstance(reservation, Refusal):
            self.local_admitted += 1
        return reservation

    def release(self, key: KeyRecord, limits: tuple[int, int, int], give_back: int, lease: str) -> None:
        """Settle a shared reservation: the slot and the unused tokens go back to the store."""
        self._leases.pop(lease, None)
        rpm, tpm, _ = limits
        if not lease and not (tpm and give_back):
            return
        if not self.store.up:
            return  # the lease expires by itself; unused tokens stay used until the bucket refills

        async def settle() -> None:
            try:
                await self.store.call(lambda client: self._settle(
                    keys=self._keys(key.key_id), args=[rpm, tpm, give_back, lease], client=client))
            except StoreDown:
                pass

        self.store.spawn(settle())

    async def _renew_leases(self) -> None:
        """Keep the slots of running requests while they run (every lease_s / 3)."""
        while self._leases:
            await asyncio.sleep(self.store.section.lease_s / 3)
            leases = list(self._leases.items())
            if not leases or not self.store.up:
                continue
            try:
                await self.store.call(lambda client: self._renew(
                    keys=[self.store.key("leases", key_id) for _, key_id in leases],
                    args=[self._lease_ms, *(lease for lease, _ in leases)], client=client))
            except StoreDown:
                pass


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
