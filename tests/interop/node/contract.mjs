// The help-exchange producer contract, computed in Node.js from the published documents
// (README.md, docs/contract.md, docs/keys.md, docs/rules.md, schemas/) and nothing else.
// Each function names the section of docs/contract.md it implements.

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import canonicalize from 'canonicalize'
import YAML from 'yaml'

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const SCHEMAS = path.join(REPO, 'schemas')

// §1 Numbers
export const SCHEMA_VERSION = '1.0'
export const MAX_MESSAGE_BYTES = 16384
export const SIGNAL_PARTITIONS = 8
export const FUNDS = ['urssaf', 'cpam', 'caf', 'carsat', 'msa']

/** A documented refusal: `reason` is a code of schemas/common.schema.json#/$defs/reason. */
export class Refused extends Error {
  constructor (reason, detail) {
    super(`${reason}: ${detail}`)
    this.reason = reason
    this.detail = detail
  }
}

// ------------------------------------------------------------------------------- encodings
export function b64url (buf) {
  return Buffer.from(buf).toString('base64url') // RFC 4648 §5, no padding
}

export function b64urlDecode (text) {
  return Buffer.from(text, 'base64url')
}

const ascii = (text) => Buffer.from(text, 'ascii')
const NUL = Buffer.from([0])
const hmac = (key, ...parts) => crypto.createHmac('sha256', key).update(Buffer.concat(parts)).digest()

// ------------------------------------------------------------------------------- §3 NIR
const PRINTABLE = /^[\x20-\x7e]*$/

/** Normalise a NIR as the back-office holds it; returns 15 characters or throws Refused. */
export function normaliseNir (raw) {
  if (typeof raw !== 'string' || !PRINTABLE.test(raw) || raw.length > 64) {
    throw new Refused('texte_libre', 'NIR: printable ASCII, at most 64 characters')
  }
  const nir = raw.replace(/[ .]/g, '').replace(/[a-z]/g, (c) => c.toUpperCase())
  if (!'123478'.includes(nir[0] ?? '-')) throw new Refused('nir_invalide', 'NIR: first character must be 1, 2, 3, 4, 7 or 8')
  if (!/^[0-9]{5}([0-9]{2}|2A|2B)[0-9]{8}$/.test(nir)) throw new Refused('nir_invalide', 'NIR: 15 characters expected')
  const n = BigInt(nir.slice(0, 13).replace('2A', '19').replace('2B', '18'))
  const key = 97n - (n % 97n)
  if (nir.slice(13) !== String(key).padStart(2, '0')) throw new Refused('cle_nir_invalide', 'NIR: control key does not match')
  return nir
}

// ------------------------------------------------------------------------------- §4 pseudonym
export const PSEUDONYM_LABEL = 'help-exchange/pseudonym/v1'

export function pseudonymValue (exchangeKey, nir15) {
  return b64url(hmac(exchangeKey, ascii(PSEUDONYM_LABEL), NUL, ascii(nir15)))
}

// ------------------------------------------------------------------------------- §5 signal id
export const SIGNAL_ID_LABEL = 'help-exchange/signal-id/v1'

export function signalId (idRoot, fund, reference, category, observedOn) {
  const kId = hmac(idRoot, ascii(SIGNAL_ID_LABEL))
  const msg = Buffer.concat([ascii(fund), NUL, ascii(reference), NUL, ascii(category), NUL, ascii(observedOn)])
  return hmac(kId, msg).subarray(0, 16).toString('hex')
}

// ------------------------------------------------------------------------------- §6 seal
export const SEAL_LABEL = 'help-exchange/sealed-ref/v1'
const REFERENCE = /^[A-Za-z0-9/_.-]{2,64}$/

export function checkReference (raw) {
  const ref = String(raw ?? '').replace(/^ +| +$/g, '')
  if (!REFERENCE.test(ref)) throw new Refused('reference_invalide', 'reference: 2-64 of A-Z a-z 0-9 / _ . -')
  return ref
}

function sealAad (fund, sealKeyId) {
  return Buffer.concat([ascii(SEAL_LABEL), NUL, ascii(fund), NUL, ascii(sealKeyId)])
}

export function binding (pseudonym) {
  return crypto.createHash('sha256').update(ascii(`${pseudonym.key_id}:${pseudonym.value}`)).digest().subarray(0, 8)
}

/** AES-256-GCM seal of the reference; `nonce` only for the test vectors (else random). */
export function seal (sealKey, sealKeyId, fund, pseudonym, reference, nonce = crypto.randomBytes(12)) {
  const cipher = crypto.createCipheriv('aes-256-gcm', sealKey, nonce, { authTagLength: 16 })
  cipher.setAAD(sealAad(fund, sealKeyId))
  const ct = Buffer.concat([cipher.update(Buffer.concat([binding(pseudonym), ascii(reference)])), cipher.final()])
  return { key_id: sealKeyId, value: b64url(Buffer.concat([nonce, ct, cipher.getAuthTag()])) }
}

/** Opens a seal; returns the reference (and checks the binding when the pseudonym is given). */
export function openSeal (sealKey, sealKeyId, fund, value, pseudonym = null) {
  const raw = b64urlDecode(value)
  const decipher = crypto.createDecipheriv('aes-256-gcm', sealKey, raw.subarray(0, 12), { authTagLength: 16 })
  decipher.setAAD(sealAad(fund, sealKeyId))
  decipher.setAuthTag(raw.subarray(raw.length - 16))
  const plain = Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()])
  if (pseudonym && !plain.subarray(0, 8).equals(binding(pseudonym))) throw new Error('seal bound to another pseudonym')
  return plain.subarray(8).toString('ascii')
}

export const token = (sealed) => `scelle:${sealed.key_id}:${sealed.value}`

// ------------------------------------------------------------------------------- §2.1 sealed form
export const SIGNAL_KEY_INFO = 'help-exchange/signal-key/v1'
export const SIGNAL_AAD_LABEL = 'help-exchange/signal/v1'
export const SEALED_MEMBERS = ['category', 'observed_on', 'territory', 'sealed_ref']

/** The fund's key for a person: HKDF-SHA256 of the person's data key (the exchange does this; the endpoint answers it). */
export function fundKey (dataKey, fund) {
  const info = Buffer.concat([ascii(SIGNAL_KEY_INFO), Buffer.from([0]), ascii(fund)])
  return Buffer.from(crypto.hkdfSync('sha256', dataKey, Buffer.alloc(0), info, 32))
}

export function signalAad (topic, signalId, subject, epoch) {
  const e = Buffer.alloc(4)
  e.writeUInt32BE(epoch)
  return Buffer.concat([ascii(SIGNAL_AAD_LABEL), Buffer.from([0]), ascii(topic), Buffer.from([0]), ascii(signalId),
    Buffer.from([0]), subject, e])
}

export function sealedPlaintext (message) {
  return Buffer.from(canonicalize(Object.fromEntries(SEALED_MEMBERS.map((k) => [k, message[k]]))), 'utf8')
}

/**
 * The unsigned signal with its person members sealed (§2.1) under `key` (the key endpoint's
 * answer for the pseudonym: {subject (hex), epoch, key (32 bytes)}); `nonce` only for the vectors.
 */
export function sealSignal (message, topic, answer, nonce = crypto.randomBytes(12)) {
  const subject = Buffer.from(answer.subject, 'hex')
  const cipher = crypto.createCipheriv('aes-256-gcm', answer.key, nonce, { authTagLength: 16 })
  cipher.setAAD(signalAad(topic, message.signal_id, subject, answer.epoch))
  const ct = Buffer.concat([cipher.update(sealedPlaintext(message)), cipher.final()])
  const out = Object.fromEntries(Object.entries(message).filter(([k]) => !SEALED_MEMBERS.includes(k) && k !== 'signature'))
  out.sealed = { alg: 'A256GCM', subject: answer.subject, epoch: answer.epoch, value: b64url(Buffer.concat([nonce, ct, cipher.getAuthTag()])) }
  return out
}

/** Asks the key endpoint (§4.4) for the keys of these pseudonyms: Map value -> {subject, epoch, key}. */
export async function signalKeys (url, fund, pseudonyms) {
  const found = new Map()
  for (let i = 0; i < pseudonyms.length; i += 4096) {
    const res = await fetch(`${url.replace(/\/$/, '')}/v1/signal-keys`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ fund, pseudonyms: pseudonyms.slice(i, i + 4096) })
    })
    const doc = await res.json()
    if (res.status !== 200) throw new Error(`key endpoint: ${doc.reason}: ${doc.message}`)
    for (const k of doc.keys) found.set(k.pseudonym, { subject: k.subject, epoch: k.epoch, key: b64urlDecode(k.key) })
  }
  return found
}

// ------------------------------------------------------------------------------- §7 signature
export function canonicalBytes (message) {
  const { signature, ...rest } = message
  return Buffer.from(canonicalize(rest), 'utf8')
}

export function sign (message, privateKey, keyId) {
  const value = crypto.sign(null, canonicalBytes(message), privateKey)
  return { ...message, signature: { key_id: keyId, alg: 'Ed25519', value: b64url(value) } }
}

export function verify (message, publicKey) {
  return crypto.verify(null, canonicalBytes(message), publicKey, b64urlDecode(message.signature.value))
}

/** The wire form our producer sends: the canonical form of the whole signed message. */
export function wire (message) {
  return Buffer.from(canonicalize(message), 'utf8')
}

/** Public key as registry.json holds it: b64url of the 32 raw bytes. */
export function rawPublicKey (publicKey) {
  const jwk = crypto.createPublicKey(publicKey).export({ format: 'jwk' })
  return jwk.x // JWK `x` of an OKP key is already b64url without padding
}

export function publicKeyFromRaw (raw) {
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw }, format: 'jwk' })
}

// ------------------------------------------------------------------------------- §9 partition
/** Kafka's murmur2 (Java client Utils.murmur2), as written out in docs/contract.md §9. */
export function murmur2 (data) {
  const m = 0x5bd1e995
  const r = 24
  const len = data.length
  let h = (0x9747b28c ^ len) >>> 0
  const blocks = len >> 2
  for (let i = 0; i < blocks; i++) {
    let k = data.readUInt32LE(i * 4)
    k = Math.imul(k, m) >>> 0
    k = (k ^ (k >>> r)) >>> 0
    k = Math.imul(k, m) >>> 0
    h = Math.imul(h, m) >>> 0
    h = (h ^ k) >>> 0
  }
  const tail = blocks * 4
  switch (len & 3) {
    case 3: h = (h ^ (data[tail + 2] << 16)) >>> 0 // falls through
    case 2: h = (h ^ (data[tail + 1] << 8)) >>> 0 // falls through
    case 1:
      h = (h ^ data[tail]) >>> 0
      h = Math.imul(h, m) >>> 0
  }
  h = (h ^ (h >>> 13)) >>> 0
  h = Math.imul(h, m) >>> 0
  h = (h ^ (h >>> 15)) >>> 0
  return h
}

export function partitionFor (key, partitions = SIGNAL_PARTITIONS) {
  return (murmur2(Buffer.isBuffer(key) ? key : ascii(key)) & 0x7fffffff) % partitions
}

// ------------------------------------------------------------------------------- keys on disk
/** The key directory layout of docs/contract.md §4, §6, §7 (registry.json, current.json). */
export class KeyDir {
  constructor (dir) {
    this.dir = dir
  }

  /** registry.json, taken only if registry.json.sig (Ed25519 over its exact bytes, base64url)
   * verifies under registry-signer.pub when that pinned key is present (docs/keys.md). */
  registry () {
    const bytes = fs.readFileSync(path.join(this.dir, 'registry.json'))
    const pinned = path.join(this.dir, 'registry-signer.pub')
    if (fs.existsSync(pinned)) {
      const sigFile = path.join(this.dir, 'registry.json.sig')
      const sig = fs.existsSync(sigFile) ? b64urlDecode(fs.readFileSync(sigFile, 'ascii').trim()) : Buffer.alloc(0)
      if (sig.length !== 64 || !crypto.verify(null, bytes, crypto.createPublicKey(fs.readFileSync(pinned)), sig)) {
        throw new Error(`${this.dir}/registry.json: its signature does not verify under registry-signer.pub`)
      }
    }
    return JSON.parse(bytes.toString('utf8'))
  }

  /** §4: the active exchange key with the greatest created_at, ties by the greatest key_id. */
  currentExchangeKey () {
    const active = (this.registry().exchange_keys ?? []).filter((k) => k.status === 'active')
    if (active.length === 0) throw new Error(`no active exchange key in ${this.dir}/registry.json`)
    active.sort((a, b) => (a.created_at === b.created_at ? cmp(a.key_id, b.key_id) : cmp(a.created_at, b.created_at)))
    const keyId = active[active.length - 1].key_id
    return { keyId, key: this.#raw32(path.join(this.dir, 'exchange', `${keyId}.key`)) }
  }

  /** §4.3: the exchange key of a `pseudonym_previous` link during a window. It must be an
   * active exchange key of the registry, older than the current one (greater created_at,
   * ties by key_id, as §4 orders them) — what the exchange checks at step 10a, checked here
   * first so that nothing it would refuse is sent — and its file must be in the key folder. */
  previousExchangeKey (keyId, current = this.currentExchangeKey()) {
    const keys = this.registry().exchange_keys ?? []
    const entry = keys.find((k) => k.key_id === keyId)
    if (!entry) throw new Refused('lien_pseudonyme_invalide', `/pseudonym_previous/key_id:unknown (${keyId} is not an exchange key of the registry)`)
    if (entry.status === 'retired') throw new Refused('lien_pseudonyme_perime', `/pseudonym_previous/key_id:retired (${keyId}: the window is over, send no link)`)
    const currentEntry = keys.find((k) => k.key_id === current.keyId)
    const older = entry.created_at === currentEntry.created_at ? cmp(entry.key_id, current.keyId) < 0 : cmp(entry.created_at, currentEntry.created_at) < 0
    if (keyId === current.keyId || !older) throw new Refused('lien_pseudonyme_invalide', `/pseudonym_previous/key_id:not_older_than_pseudonym (${keyId} is not older than the current key ${current.keyId})`)
    return { keyId, key: this.#raw32(path.join(this.dir, 'exchange', `${keyId}.key`)) }
  }

  fundCurrent (fund) {
    return JSON.parse(fs.readFileSync(path.join(this.dir, 'funds', fund, 'current.json'), 'utf8'))
  }

  sealingKey (fund, keyId = this.fundCurrent(fund).sealing) {
    return { keyId, key: this.#raw32(path.join(this.dir, 'funds', fund, `${keyId}.key`)) }
  }

  idRoot (fund) {
    return this.sealingKey(fund, this.fundCurrent(fund).id_root).key
  }

  #raw32 (file) {
    const key = fs.readFileSync(file)
    if (key.length !== 32) throw new Error(`${file}: ${key.length} bytes, a key has 32`)
    return key
  }
}

const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0)

// ------------------------------------------------------------------------------- §8 policy as data
let taxonomyCache = null
export function taxonomy () {
  if (!taxonomyCache) {
    const doc = YAML.parse(fs.readFileSync(path.join(SCHEMAS, 'taxonomy.yaml'), 'utf8'))
    taxonomyCache = new Map(doc.categories.map((c) => [c.code, c]))
  }
  return taxonomyCache
}

const CONSENT_REF = /^[A-Z]{2,10}(-[A-Z0-9]{1,12}){1,4}$/
const DEPARTEMENT = /^(0[1-9]|[1-8][0-9]|9[0-5]|2A|2B|97[1-6])$/
const CODE = /^[a-z][a-z0-9_]{2,47}$/

export function checkTerritory (raw) {
  let t = String(raw ?? '').trim().toUpperCase()
  if (/^[0-9]$/.test(t)) t = `0${t}`
  if (!DEPARTEMENT.test(t) || t === '20') throw new Refused('departement_invalide', 'département: 01-95, 2A, 2B, 971-976')
  return t
}

/** The category checks of §12's fund-side order (steps 3-5): exists, the fund's own, class NM. */
export function checkCategory (fund, category) {
  const cat = CODE.test(category) ? taxonomy().get(category) : undefined
  if (!cat) throw new Refused('categorie_inconnue', 'category: not in schemas/taxonomy.yaml')
  if (cat.organisme !== fund) throw new Refused('categorie_autre_organisme', `category: belongs to ${cat.organisme}`)
  if (cat.classe !== 'NM') throw new Refused('categorie_medicale', 'category: medical or sensitive, never leaves the fund')
  return cat
}

/** Category, purpose and legal basis as the exchange will judge them (§8), fund side, in
 * §12's fund-side order: purpose known, consent reference's form, then the policy. */
export function checkPolicy (fund, category, purpose, consentRef, nir15, today) {
  const cat = checkCategory(fund, category)
  const finalite = purpose || cat.finalites[0]
  if (!PURPOSES.includes(finalite)) throw new Refused('finalite_non_autorisee', 'purpose: acces_aux_droits or prevention_perte_autonomie')
  if (consentRef && !CONSENT_REF.test(consentRef)) throw new Refused('base_legale_invalide', 'consent reference: e.g. HELP-2026-000123')
  if (!cat.finalites.includes(finalite)) throw new Refused('finalite_non_autorisee', 'purpose: not allowed for the category')
  if (consentRef) {
    return { purpose: finalite, legal_basis: { code: 'consentement', consent_ref: consentRef } }
  }
  const conditions = []
  if (finalite === 'prevention_perte_autonomie') {
    if (!age55Plus(nir15, today)) throw new Refused('condition_non_remplie', 'age_55_plus: the person is not 55 or more')
    conditions.push('age_55_plus')
  }
  return { purpose: finalite, legal_basis: { code: 'L115-2-1', conditions } }
}

/** age_55_plus attested from the NIR as docs/contract.md §8 says our tools do, never
 * over-estimating: birth year 20yy unless after the current year (then 19yy), birth month
 * (outside 01-12: December), age = current year - birth year, minus 1 if the current month is
 * not after the birth month. (The first draft of the document said only "from the NIR".) */
export function age55Plus (nir15, today = todayParis()) {
  const [y, m] = today.split('-').map(Number)
  let year = 2000 + Number(nir15.slice(1, 3))
  if (year > y) year -= 100
  let month = Number(nir15.slice(3, 5))
  if (!(month >= 1 && month <= 12)) month = 12
  const age = y - year - (m <= month ? 1 : 0)
  return age >= 55
}

// ------------------------------------------------------------------------------- dates
/** Today's calendar date in Europe/Paris, YYYY-MM-DD. */
export function todayParis (now = new Date()) {
  return new Intl.DateTimeFormat('en-CA', { timeZone: 'Europe/Paris', year: 'numeric', month: '2-digit', day: '2-digit' }).format(now)
}

/** Reads AAAA-MM-JJ or JJ/MM/AAAA into YYYY-MM-DD (a real calendar date), else date_invalide. */
export function parseDate (raw) {
  const text = String(raw ?? '').trim()
  let m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text)
  let y, mo, d
  if (m) [, y, mo, d] = m
  else if ((m = /^(\d{2})\/(\d{2})\/(\d{4})$/.exec(text))) [, d, mo, y] = m
  else throw new Refused('date_invalide', 'date: AAAA-MM-JJ or JJ/MM/AAAA')
  const date = new Date(Date.UTC(Number(y), Number(mo) - 1, Number(d)))
  const iso = `${y}-${mo}-${d}`
  if (Number.isNaN(date.getTime()) || date.toISOString().slice(0, 10) !== iso) throw new Refused('date_invalide', 'date: not a calendar date')
  return iso
}

/** The date rules of §8 / rules.md, fund side: not after today (Paris), not older than 2 years. */
export function checkObservedOn (iso, today = todayParis()) {
  if (iso > today) throw new Refused('date_future', 'observed_on: after today (Europe/Paris)')
  if (iso < oldestDay(today)) throw new Refused('date_trop_ancienne', 'observed_on: older than 2 years')
  return iso
}

/** RFC 3339 UTC with 6 fraction digits, as our tools write emitted_at (§2). */
export function emittedAt (now = new Date()) {
  return now.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z')
}

// ------------------------------------------------------------------------------- §2 a signal
/** Extract file columns (README "Extract files") and the record fields they fill. */
export const EXTRACT_COLUMNS = {
  nir: 'nir',
  categorie: 'category',
  date_observation: 'observed_on',
  departement: 'territory',
  reference_dossier: 'reference',
  consentement: 'consent',
  finalite: 'purpose'
}

export function fromExtract (row) {
  const rec = {}
  for (const [k, v] of Object.entries(row)) rec[EXTRACT_COLUMNS[k] ?? k] = v == null ? v : String(v)
  return rec
}

/** §12 "Free text (texte_libre)": every field printable ASCII, at most 64 characters, and no
 * two words (the regular expression of §12; \s is only the space once the value is printable). */
const WORDS = /[A-Za-z]{2,}[\s,;:!?'"]+[A-Za-z]{2,}/
export function guardRecord (record) {
  for (const [name, value] of Object.entries(record)) {
    if (value != null && (typeof value !== 'string' || !PRINTABLE.test(value) || value.length > 64 || WORDS.test(value))) {
      throw new Refused('texte_libre', `${name}: printable ASCII, at most 64 characters`)
    }
  }
}

/**
 * Builds and signs one signal from a back-office record:
 * {nir, category, observed_on, territory, reference, consent?, purpose?}.
 * `keys`: {exchange: {keyId, key}, sealing: {keyId, key}, idRoot, signing: {keyId, privateKey}}.
 */
export function buildSignal (fund, record, keys, opts = {}) {
  guardRecord(record)
  const nir = normaliseNir(record.nir)
  const category = String(record.category ?? '').trim()
  checkCategory(fund, category)
  const observedOn = parseDate(record.observed_on)
  if (!opts.uncheckedDates) checkObservedOn(observedOn, opts.today)
  const territory = checkTerritory(record.territory)
  const reference = checkReference(record.reference)
  const policy = checkPolicy(fund, category, (record.purpose ?? '').trim(), (record.consent ?? '').trim(), nir, opts.today ?? todayParis())
  // §4.2: under scheme v2 the pseudonym comes from the pseudonymisation service (opts.pseudonym).
  const pseudonym = opts.pseudonym ?? { key_id: keys.exchange.keyId, value: pseudonymValue(keys.exchange.key, nir) }
  const message = {
    signal_id: signalId(keys.idRoot, fund, reference, category, observedOn),
    schema_version: SCHEMA_VERSION,
    fund,
    emitter: `${fund}-${territory.toLowerCase()}`,
    category,
    observed_on: observedOn,
    emitted_at: opts.emittedAt ?? emittedAt(),
    territory,
    pseudonym,
    sealed_ref: seal(keys.sealing.key, keys.sealing.keyId, fund, pseudonym, reference, ...(opts.nonce ? [opts.nonce] : [])),
    legal_basis: policy.legal_basis,
    purpose: policy.purpose
  }
  // §4.3: during a rotation or migration window, the same person under the previous key.
  if (opts.pseudonymPrevious) message.pseudonym_previous = opts.pseudonymPrevious
  else if (keys.previous) message.pseudonym_previous = { key_id: keys.previous.keyId, value: pseudonymValue(keys.previous.key, nir) }
  return sign(message, keys.signing.privateKey, keys.signing.keyId)
}

let policyCache = null
export function policy () {
  policyCache ??= YAML.parse(fs.readFileSync(path.join(SCHEMAS, 'policy.yaml'), 'utf8'))
  return policyCache
}

/** §8 as the exchange applies it to a received signal (the fund-side checks, on the wire). */
export function checkPolicyOnWire (msg) {
  const cat = taxonomy().get(msg.category)
  if (!cat) throw new Refused('categorie_inconnue', '/category')
  if (cat.organisme !== msg.fund) throw new Refused('categorie_autre_organisme', '/category')
  if (!policy().classes[cat.classe]?.echangeable) throw new Refused('categorie_medicale', '/category')
  if (!cat.finalites.includes(msg.purpose)) throw new Refused('finalite_non_autorisee', '/purpose')
  const basis = policy().bases_legales[msg.legal_basis.code]
  const rule = basis?.finalites?.[msg.purpose]
  if (!rule) throw new Refused('base_legale_invalide', '/legal_basis')
  const attested = msg.legal_basis.conditions ?? []
  if (msg.legal_basis.code === 'L115-2-1' && !rule.conditions.every((k) => attested.includes(k))) {
    throw new Refused('condition_non_remplie', '/legal_basis/conditions')
  }
}

// ------------------------------------------------------------------------------- §10 consents
export const CONSENT_ID_LABEL = 'help-exchange/consent-id/v1'
export const PURPOSES = ['acces_aux_droits', 'prevention_perte_autonomie']
export const CONSENT_KINDS = ['consentement_donne', 'consentement_retire', 'opposition']

/** The UTC instant of 00:00 Europe/Paris on `iso` (YYYY-MM-DD), written as our tools write it. */
export function parisMidnight (iso) {
  const [y, m, d] = iso.split('-').map(Number)
  const offsetAt = (t) => {
    const parts = Object.fromEntries(new Intl.DateTimeFormat('en-GB', {
      timeZone: 'Europe/Paris', hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit'
    }).formatToParts(new Date(t)).map((p) => [p.type, p.value]))
    return Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second) - t
  }
  const local = Date.UTC(y, m - 1, d)
  let t = local - offsetAt(local)
  t = local - offsetAt(t)
  return emittedAt(new Date(t))
}

export function consentId (idRoot, fund, kind, pseudonym, consentRef, date) {
  const kId = hmac(idRoot, ascii(CONSENT_ID_LABEL))
  const msg = [fund, kind, pseudonym.key_id, pseudonym.value, consentRef, date].join('\0')
  return hmac(kId, ascii(msg)).subarray(0, 16).toString('hex')
}

/**
 * A consent, withdrawal or objection from a back-office line {nir, consent_ref, purposes,
 * date, departement}: the wire message, members in the schema's order (§10, consents.json).
 * Checks in the order of docs/files.md ("Consent files"): several purposes in one cell are
 * separated by ',' or '|', and that cell is exempt from the word rule (a list of codes).
 */
export function buildConsent (fund, kind, line, keys, opts = {}) {
  const { purposes: purposesCell, ...others } = line
  guardRecord({ nir: others.nir, consent_ref: others.consent_ref, date: others.date, departement: others.departement })
  const purposesText = String(purposesCell ?? '')
  if (purposesText.length > 128 || !PRINTABLE.test(purposesText)) throw new Refused('texte_libre', 'purposes: printable ASCII, at most 128 characters')
  if (!CONSENT_KINDS.includes(kind)) throw new Refused('schema_invalide', `kind: one of ${CONSENT_KINDS.join(', ')}`)
  const nir = normaliseNir(line.nir)
  const consentRef = String(line.consent_ref ?? '').trim()
  if (!CONSENT_REF.test(consentRef)) throw new Refused('base_legale_invalide', 'consent reference: e.g. HELP-2026-000123')
  let purposes = purposesText.split(/[,|]/).map((p) => p.trim()).filter(Boolean)
  if (purposes.some((p) => !PURPOSES.includes(p))) throw new Refused('finalite_non_autorisee', 'purposes: acces_aux_droits, prevention_perte_autonomie')
  if (purposes.length === 0) {
    if (kind === 'consentement_donne') throw new Refused('finalite_non_autorisee', 'a consent names its purposes')
    purposes = [...PURPOSES]
  }
  purposes = PURPOSES.filter((p) => purposes.includes(p))
  const now = opts.now ?? emittedAt()
  const today = opts.today ?? todayParis()
  const date = String(line.date ?? '').trim() ? parseDate(line.date) : today
  if (date > today) throw new Refused('date_future', 'date_effet: after today (Europe/Paris)')
  const territory = checkTerritory(line.departement)
  // §4.2: under scheme v2 the pseudonym comes from the pseudonymisation service (opts.pseudonym).
  const pseudonym = opts.pseudonym ?? { key_id: keys.exchange.keyId, value: pseudonymValue(keys.exchange.key, nir) }
  const message = {
    schema_version: SCHEMA_VERSION,
    event_id: consentId(keys.idRoot, fund, kind, pseudonym, consentRef, date),
    kind,
    fund,
    emitter: `${fund}-${territory.toLowerCase()}`,
    pseudonym,
    purposes,
    consent_ref: consentRef,
    effective_at: now
  }
  const signature = crypto.sign(null, canonicalBytes(message), keys.signing.privateKey)
  return { ...message, signature: { key_id: keys.signing.keyId, alg: 'Ed25519', value: b64url(signature) } }
}

// ------------------------------------------------------------------------------- docs/rules.md, dates on the wire
export const CLOCK_SKEW_MICROS = 5n * 60n * 1000000n

/** RFC 3339 UTC timestamp -> microseconds since the epoch (BigInt), exact to the microsecond. */
export function micros (ts) {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?Z$/.exec(ts)
  if (!m) throw new Error(`not a UTC timestamp: ${ts}`)
  return BigInt(Date.parse(`${m[1]}Z`)) * 1000n + BigInt((m[2] ?? '').padEnd(6, '0'))
}

/** The oldest accepted day (docs/rules.md): the same day 2 years earlier; from a 29 February, the 28th. */
export function oldestDay (today) {
  const [y, m, d] = today.split('-')
  return `${Number(y) - 2}-${m}-${m === '02' && d === '29' ? '28' : d}`
}

/** The date rules the exchange applies to a signal, against its clock `now` (docs/rules.md). */
export function checkSignalDates (msg, now) {
  const today = todayParis(new Date(now))
  if (msg.observed_on > today) throw new Refused('date_future', '/observed_on:in_future')
  if (msg.observed_on < oldestDay(today)) throw new Refused('date_trop_ancienne', '/observed_on:older_than_2_years')
  const emitted = micros(msg.emitted_at)
  if (emitted > micros(now) + CLOCK_SKEW_MICROS) throw new Refused('date_future', '/emitted_at:in_future_beyond_clock_skew')
  if (emitted < micros(parisMidnight(oldestDay(today)))) throw new Refused('date_trop_ancienne', '/emitted_at:older_than_2_years')
  if (msg.observed_on > todayParis(new Date(Number(emitted / 1000n)))) throw new Refused('date_future', '/observed_on:after_emitted_at')
}

export function checkConsentDates (msg, now) {
  if (micros(msg.effective_at) > micros(now) + CLOCK_SKEW_MICROS) throw new Refused('date_future', '/effective_at:in_future_beyond_clock_skew')
}
