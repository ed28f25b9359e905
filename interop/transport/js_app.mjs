// libp2p transport-interop test app on js-libp2p (https://github.com/libp2p/test-plans).
//
// Settings come from the environment: IS_DIALER ("true"/"false"), REDIS_ADDR (host:port),
// TEST_KEY, TRANSPORT ("tcp" or "quic-v1"), SECURE_CHANNEL ("noise") and MUXER ("yamux")
// for tcp, optional LISTENER_IP (default 0.0.0.0) and test_timeout_seconds (default 180).
//
// The listener RPUSHes its multiaddr to `${TEST_KEY}_listener_multiaddr` and stays up until
// it is killed (or the timeout passes). The dialer BLPOPs it, dials, pings and prints
// {"handshakePlusOneRTTMillis": X, "pingRTTMillis": Y} on stdout. The exit code is the
// verdict (0 = pass); diagnostics go to stderr.

import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { quic } from '@chainsafe/libp2p-quic'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'
import { createClient } from 'redis'

function fail (msg) {
  process.stderr.write(`js_app: ${msg}\n`)
  process.exit(1)
}

function env (name, fallback) {
  const value = process.env[name] ?? fallback
  if (value == null || value === '') fail(`${name} is not set`)
  return value
}

const isDialer = env('IS_DIALER').toLowerCase() === 'true'
const redisAddr = env('REDIS_ADDR', 'redis:6379')
const testKey = env('TEST_KEY')
const transport = env('TRANSPORT')
const listenerIp = env('LISTENER_IP', '0.0.0.0')
const timeoutSecs = Number(env('test_timeout_seconds', '180'))
const redisKey = `${testKey}_listener_multiaddr`

let phase = 'starting'
const timer = setTimeout(
  () => fail(`test_timeout_seconds (${timeoutSecs}s) passed while ${phase}`),
  timeoutSecs * 1000
)

function describe (err) {
  if (err == null || typeof err !== 'object') return String(err)
  let text = `${err.name ?? 'Error'}: ${err.message}`
  const inner = err.errors ?? (err.cause != null ? [err.cause] : [])
  if (Array.isArray(inner) && inner.length > 0) {
    text += ` (${inner.map((e) => e?.message ?? String(e)).join('; ')})`
  }
  return text
}

const options = {
  addresses: { listen: [] },
  transports: [],
  connectionEncrypters: [],
  streamMuxers: [],
  services: { identify: identify(), ping: ping() },
  connectionManager: { maxConnections: 100 }
}

if (transport === 'tcp') {
  const security = env('SECURE_CHANNEL')
  const muxer = env('MUXER')
  if (security !== 'noise') fail(`SECURE_CHANNEL ${JSON.stringify(security)} is not supported (only noise)`)
  if (muxer !== 'yamux') fail(`MUXER ${JSON.stringify(muxer)} is not supported (only yamux)`)
  options.transports.push(tcp())
  options.connectionEncrypters.push(noise())
  options.streamMuxers.push(yamux())
  if (!isDialer) options.addresses.listen.push(`/ip4/${listenerIp}/tcp/0`)
} else if (transport === 'quic-v1') {
  options.transports.push(quic())
  if (!isDialer) options.addresses.listen.push(`/ip4/${listenerIp}/udp/0/quic-v1`)
} else {
  fail(`TRANSPORT ${JSON.stringify(transport)} is not supported (tcp, quic-v1)`)
}

const redis = createClient({ url: `redis://${redisAddr}` })
redis.on('error', (err) => fail(`redis: ${err.message}`))

let node
try {
  phase = `connecting to redis at ${redisAddr}`
  await redis.connect()
  phase = 'starting libp2p'
  node = await createLibp2p(options)

  if (isDialer) {
    phase = `waiting for the listener address in redis (${redisKey})`
    const reply = await redis.blPop(redisKey, timeoutSecs)
    if (reply == null) fail(`no listener address in redis within ${timeoutSecs}s`)
    const target = multiaddr(reply.element)
    process.stderr.write(`dialer: dialing ${target}\n`)

    const start = performance.now()
    phase = `dialing ${target}`
    await node.dial(target)
    phase = `pinging ${target}`
    await node.services.ping.ping(target)
    const handshakePlusOneRTT = performance.now() - start

    const pingStart = performance.now()
    await node.services.ping.ping(target)
    const pingRTT = performance.now() - pingStart

    process.stdout.write(JSON.stringify({
      handshakePlusOneRTTMillis: handshakePlusOneRTT,
      pingRTTMillis: pingRTT
    }) + '\n')
    clearTimeout(timer)
    // The verdict is in: closing errors must not turn it into a failure.
    redis.removeAllListeners('error')
    redis.on('error', () => {})
    await Promise.race([
      Promise.allSettled([node.stop(), redis.quit()]),
      new Promise((resolve) => setTimeout(resolve, 1000))
    ])
    process.exit(0)
  } else {
    const addrs = node.getMultiaddrs().map((ma) => ma.toString())
    if (addrs.length === 0) fail('the node has no listen address')
    // Listening on 0.0.0.0 expands to every interface: publish one a dialer can reach.
    const addr = addrs.find((a) => !a.startsWith('/ip4/127.')) ?? addrs[0]
    phase = 'publishing the listen address to redis'
    await redis.rPush(redisKey, addr)
    process.stderr.write(`listener: published ${addr}\n`)
    phase = 'waiting for the dialer (nobody stopped this listener)'
    // Stay up until killed; the timer ends us (as a failure) if nobody does.
  }
} catch (err) {
  if (err?.stack != null) process.stderr.write(`${err.stack}\n`)
  fail(`${phase}: ${describe(err)}`)
}
