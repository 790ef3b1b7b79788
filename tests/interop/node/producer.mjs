#!/usr/bin/env node
// A fund's back-office producer for help-exchange, in Node.js, from the documents alone.
//
//   node producer.mjs init --fund F --key-dir DIR
//       the fund's key folder made here: a sealing key (also the id_root), an Ed25519 signing
//       key pair (DIR/funds/F/<id>.pem, PKCS#8; <id>.pub.pem, SPKI: what
//       `help-exchange keys register --fund F --public-key <id>.pub.pem` takes), current.json
//   node producer.mjs keygen --fund F --key-dir DIR      another signing key pair
//   node producer.mjs make-current --fund F --key-dir DIR --signing-key-id ID
//   node producer.mjs publish --fund F --input FILE --key-dir DIR --bootstrap HOST:PORT
//       [--signing-key-id ID (default: current.json's)] [--out RESULTS.jsonl]
//       [--signal-keys URL (the exchange's key endpoint: each signal sealed, contract §2.1)]
//       [--previous-key-id XK (a rotation window, contract §4.3: each signal also carries
//        pseudonym_previous, the person's pseudonym under that older active exchange key of
//        the key folder, so that the exchange moves what it holds of the person)]
//       builds, signs and sends one signal per record of FILE (CSV ';' with the extract header,
//       a JSON array, or JSONL); prints one JSON line per record: sent (with its position) or
//       rejected at the fund (with its reason). Exit 0 all sent, 2 some rejected, 1 failure.
//   node producer.mjs receipts --fund F --bootstrap HOST:PORT --signal-ids a,b,... [--timeout S]
//       [--until-accepted] reads the fund's receipts until one for each signal id has arrived
//       (an accepted one, with --until-accepted); one JSON line each.
//
// Options of `publish` that exist only to test the exchange with bad input (never in a fund's
// normal run): --topic-fund G (send on G's topic), --partition N (force a partition),
// --pad-bytes N (N spaces of JSON whitespace before the object), --forge-signature (flip a bit
// of the signature), --unchecked-dates (leave the date rules to the exchange), --emitted-at TS,
// --repeat N (send each record N times), --dry-run (build, print, send nothing).

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Consumer, Producer, ProduceAcks, stringDeserializers } from '@platformatic/kafka'
import { KeyDir, Refused, buildSignal, fromExtract, partitionFor, sealSignal, sign, signalKeys, wire, FUNDS, MAX_MESSAGE_BYTES } from './contract.mjs'

const REQUIRED = ['nir', 'categorie', 'date_observation', 'departement', 'reference_dossier']

function fail (what, fix) {
  process.stderr.write(`erreur : ${what}\n${fix}\n`)
  process.exit(1)
}

/** Records of an extract: CSV ';' (README "Extract files"), a JSON array or JSONL. */
export function readRecords (file) {
  let text = fs.readFileSync(file, 'utf8').replace(/^\uFEFF/, '')
  text = text.replace(/\r\n/g, '\n')
  const trimmed = text.trimStart()
  const toRecord = fromExtract
  if (trimmed.startsWith('[')) return JSON.parse(trimmed).map(toRecord)
  if (trimmed.startsWith('{')) return trimmed.split('\n').filter((l) => l.trim()).map((l) => toRecord(JSON.parse(l)))
  const lines = text.split('\n').filter((l) => l.trim() !== '')
  if (lines.length === 0) fail(`${file} is empty (fichier_vide)`, 'give an extract with a header line and records')
  const header = lines[0].split(';').map((h) => h.trim().toLowerCase())
  const missing = REQUIRED.filter((c) => !header.includes(c))
  if (missing.length) fail(`${file}: missing column(s) ${missing.join(', ')} (colonne_manquante)`, `header: ${REQUIRED.join(';')}[;consentement][;finalite]`)
  return lines.slice(1).map((line) => {
    const cells = line.split(';')
    if (cells.length !== header.length) return { __reason: 'ligne_mal_formee' }
    return toRecord(Object.fromEntries(header.map((h, i) => [h, cells[i] === '' ? null : cells[i]])))
  })
}

function loadKeys (args) {
  const dir = new KeyDir(args['key-dir'])
  const fund = args.fund
  const keyId = args['signing-key-id'] ?? dir.fundCurrent(fund).signing
  const privatePem = fs.readFileSync(path.join(args['key-dir'], 'funds', fund, `${keyId}.pem`), 'utf8')
  const exchange = dir.currentExchangeKey()
  let previous = null
  if (args['previous-key-id']) {
    try {
      previous = dir.previousExchangeKey(args['previous-key-id'], exchange)
    } catch (err) {
      if (!(err instanceof Refused)) throw err
      fail(`--previous-key-id ${args['previous-key-id']}: ${err.detail} (${err.reason})`,
        'name an active exchange key older than the current one (help-exchange keys list), or leave the option out outside a rotation window')
    }
  }
  return {
    exchange,
    previous,
    sealing: dir.sealingKey(fund),
    idRoot: dir.idRoot(fund),
    signing: { keyId, privateKey: crypto.createPrivateKey(privatePem) }
  }
}

async function publish (args) {
  const fund = args.fund
  if (!FUNDS.includes(fund)) fail(`unknown fund ${fund}`, `--fund is one of ${FUNDS.join(', ')}`)
  for (const opt of ['input', 'key-dir', 'bootstrap']) {
    if (!args[opt]) fail(`--${opt} is missing`, 'see the usage at the top of producer.mjs')
  }
  const keys = loadKeys(args)
  const topic = `help.signals.${args['topic-fund'] ?? fund}.v1`
  const results = []
  const outgoing = []
  const built = []
  readRecords(args.input).forEach((record, i) => {
    const line = i + 2 // 1 = the header line, as a reject report counts
    if (record.__reason) { results.push({ line, status: 'rejete', reason: record.__reason }); return }
    try {
      built.push({ line, message: buildSignal(fund, record, keys, { uncheckedDates: args['unchecked-dates'], emittedAt: args['emitted-at'] }) })
    } catch (err) {
      if (!(err instanceof Refused)) throw err
      results.push({ line, status: 'rejete', reason: err.reason, detail: err.detail })
    }
  })
  // §2.1: with --signal-keys URL, each signal's person members sealed under the key the
  // exchange's key endpoint (§4.4) answers for its pseudonym, then signed again.
  const sealing = args['signal-keys'] ? await signalKeys(args['signal-keys'], fund, [...new Set(built.map((b) => b.message.pseudonym.value))]) : null
  for (const { line, message: clear } of built) {
    let message = clear
    if (sealing) message = sign(sealSignal(clear, topic, sealing.get(clear.pseudonym.value)), keys.signing.privateKey, keys.signing.keyId)
    if (args['forge-signature']) {
      const sig = Buffer.from(message.signature.value, 'base64url')
      sig[0] ^= 1
      message.signature.value = sig.toString('base64url')
    }
    let value = wire(message)
    if (args['pad-bytes']) value = Buffer.concat([Buffer.alloc(Number(args['pad-bytes']), ' '), value])
    const key = message.pseudonym.value
    const partition = args.partition != null ? Number(args.partition) : partitionFor(key)
    const result = { line, status: 'envoye', signal_id: message.signal_id, pseudonym: key, sealed_ref: clear.sealed_ref, topic, partition, bytes: value.length }
    if (message.pseudonym_previous) result.pseudonym_previous = message.pseudonym_previous.value
    if (sealing) result.sealed = true
    if (value.length > MAX_MESSAGE_BYTES) result.oversize = true
    for (let n = 0; n < Number(args.repeat ?? 1); n++) outgoing.push({ result: n ? { ...result } : result, record: { topic, key, value, partition } })
  }
  if (args['dry-run']) {
    results.push(...outgoing.map(({ result }) => ({ ...result, status: 'prepare' })))
  } else if (outgoing.length) {
    const producer = new Producer({
      clientId: `help-node-${fund}`,
      bootstrapBrokers: args.bootstrap.split(','),
      acks: ProduceAcks.ALL,
      serializers: { key: (k) => Buffer.from(k, 'ascii'), value: (v) => v, headerKey: (h) => h, headerValue: (h) => h },
      retries: 5
    })
    try {
      // One send per record, in order, each acknowledged by all in-sync replicas (acks=all)
      // before the next: a fund's producer must know exactly which records went through.
      for (const { result, record } of outgoing) {
        const sent = await producer.send({ messages: [record], acks: ProduceAcks.ALL })
        const at = sent.offsets[0]
        result.partition = at.partition
        result.offset = Number(at.offset)
        results.push(result)
      }
    } catch (err) {
      fail(`the broker did not take the records (${err.message})`, `check --bootstrap ${args.bootstrap} and that the topic ${topic} exists (help-exchange topics apply)`)
    } finally {
      await producer.close()
    }
  }
  results.sort((a, b) => a.line - b.line)
  const out = results.map((r) => JSON.stringify(r)).join('\n') + '\n'
  if (args.out) fs.writeFileSync(args.out, out)
  process.stdout.write(out)
  return results.some((r) => r.status === 'rejete') ? 2 : 0
}

async function receipts (args) {
  const wanted = new Set(String(args['signal-ids'] ?? '').split(',').filter(Boolean))
  const positions = new Set(String(args.positions ?? '').split(',').filter(Boolean))
  const seen = new Map()
  const consumer = new Consumer({
    groupId: `help-node-receipts-${crypto.randomBytes(6).toString('hex')}`,
    clientId: `help-node-${args.fund}-receipts`,
    bootstrapBrokers: args.bootstrap.split(','),
    deserializers: stringDeserializers,
    sessionTimeout: 10000,
    heartbeatInterval: 500
  })
  const timeout = Number(args.timeout ?? 60) * 1000
  const stream = await consumer.consume({ topics: [`help.receipts.${args.fund}.v1`], mode: 'earliest', autocommit: false, maxWaitTime: 200 })
  const timer = setTimeout(() => stream.close(), timeout)
  // --until-accepted: a refused signal may be sent again once its cause is fixed; wait for
  // the accepted answer rather than the first one.
  const final = (receipt) => !args['until-accepted'] || receipt.status === 'accepte'
  const done = () => [...wanted, ...positions].every((k) => seen.has(k) && final(seen.get(k)))
  try {
    for await (const record of stream) {
      const receipt = JSON.parse(record.value)
      const s = receipt.source
      const pos = `${s.topic}:${s.partition}:${s.offset}`
      if (wanted.has(receipt.signal_id) || positions.has(pos) || (!wanted.size && !positions.size)) {
        const k = positions.has(pos) ? pos : receipt.signal_id
        if (!seen.has(k) || !final(seen.get(k))) seen.set(k, receipt)
        process.stdout.write(JSON.stringify(receipt) + '\n')
      }
      if ((wanted.size || positions.size) && done()) break
    }
  } finally {
    clearTimeout(timer)
    await stream.close().catch(() => {})
    await consumer.close(true)
  }
  if (!done()) {
    process.stderr.write(`erreur : ${[...wanted, ...positions].filter((k) => !seen.has(k)).length} receipt(s) not received in ${timeout / 1000} s\n`)
    return 1
  }
  return 0
}

const stamp = () => new Date().toISOString().slice(0, 10).replace(/-/g, '')
const hex4 = () => crypto.randomBytes(2).toString('hex')

/** A new Ed25519 key pair in the fund's folder: <id>.pem (PKCS#8) and <id>.pub.pem (SPKI). */
function newSigningKey (folder, fund) {
  const keyId = `${fund}-sig-${stamp()}-${hex4()}`
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519')
  fs.writeFileSync(path.join(folder, `${keyId}.pem`), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 })
  fs.writeFileSync(path.join(folder, `${keyId}.pub.pem`), publicKey.export({ type: 'spki', format: 'pem' }))
  return { keyId, publicPem: path.join(folder, `${keyId}.pub.pem`) }
}

/** `init`: the fund's folder of docs/contract.md §5-§7 made by Node: a sealing key (also the
 * id_root), a signing key pair, current.json. The public key still has to be registered
 * (`help-exchange keys register`): only the exchange writes the registry. */
function init (args) {
  const { fund } = args
  if (!FUNDS.includes(fund) || !args['key-dir']) fail('--fund and --key-dir are required', 'node producer.mjs init --fund carsat --key-dir DIR')
  const folder = path.join(args['key-dir'], 'funds', fund)
  if (fs.existsSync(path.join(folder, 'current.json'))) fail(`${folder}/current.json exists`, 'a fund is initialised once; use keygen for a new signing key')
  fs.mkdirSync(folder, { recursive: true, mode: 0o700 })
  const sealing = `${fund}-seal-${stamp()}-${hex4()}`
  fs.writeFileSync(path.join(folder, `${sealing}.key`), crypto.randomBytes(32), { mode: 0o600 })
  const signing = newSigningKey(folder, fund)
  fs.writeFileSync(path.join(folder, 'current.json'), JSON.stringify({ signing: signing.keyId, sealing, id_root: sealing }))
  process.stdout.write(JSON.stringify({ signing: signing.keyId, public_key: signing.publicPem, sealing, id_root: sealing }) + '\n')
  return 0
}

/** `keygen`: another signing key pair in the fund's folder; `--make-current` names it in
 * current.json (do that once the exchange has registered it). */
function keygen (args) {
  const { fund } = args
  if (!FUNDS.includes(fund) || !args['key-dir']) fail('--fund and --key-dir are required', 'node producer.mjs keygen --fund carsat --key-dir DIR')
  const folder = path.join(args['key-dir'], 'funds', fund)
  fs.mkdirSync(folder, { recursive: true, mode: 0o700 })
  const signing = newSigningKey(folder, fund)
  process.stdout.write(JSON.stringify({ signing: signing.keyId, public_key: signing.publicPem }) + '\n')
  return 0
}

function makeCurrent (args) {
  const folder = path.join(args['key-dir'], 'funds', args.fund)
  const current = JSON.parse(fs.readFileSync(path.join(folder, 'current.json'), 'utf8'))
  current.signing = args['signing-key-id']
  fs.writeFileSync(path.join(folder, 'current.json'), JSON.stringify(current))
  process.stdout.write(JSON.stringify(current) + '\n')
  return 0
}

const OPTIONS = {
  fund: { type: 'string' },
  input: { type: 'string' },
  out: { type: 'string' },
  'key-dir': { type: 'string' },
  'signing-key-id': { type: 'string' },
  bootstrap: { type: 'string' },
  'signal-ids': { type: 'string' },
  positions: { type: 'string' },
  timeout: { type: 'string' },
  'topic-fund': { type: 'string' },
  partition: { type: 'string' },
  'pad-bytes': { type: 'string' },
  'forge-signature': { type: 'boolean' },
  'unchecked-dates': { type: 'boolean' },
  'emitted-at': { type: 'string' },
  repeat: { type: 'string' },
  'dry-run': { type: 'boolean' },
  'signal-keys': { type: 'string' },
  'previous-key-id': { type: 'string' },
  'until-accepted': { type: 'boolean' }
}

async function main () {
  let parsed
  try {
    parsed = parseArgs({ options: OPTIONS, allowPositionals: true })
  } catch (err) {
    fail(err.message, 'see the usage at the top of producer.mjs')
  }
  const [command] = parsed.positionals
  const commands = { init, keygen, 'make-current': makeCurrent, publish, receipts }
  if (!commands[command]) fail(`unknown command ${command ?? '(none)'}`, `commands: ${Object.keys(commands).join(', ')}`)
  process.exitCode = await commands[command](parsed.values)
}

main().catch((err) => fail(err.message, 'see the usage at the top of producer.mjs'))
