"""Test double of Qubes dom0's `qvm` execution module.

Re-implements, against the emulated dom0 in ../qubes_db.py, what Salt callers
of QubesOS/qubes-mgmt-salt-dom0-qvm:_modules/ext_module_qvm.py (v4.2.1 = R4.2,
v4.3.6 = R4.3; opts key `qvm_emulation_version`) and the Status/argv helpers of
qubes-mgmt-salt-base (module_utils.py, _utils/qubes_utils.py) see: argument
conventions, Status objects, comments, changes and quirks. See ../README.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Callable

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = 'qvm'

FLAG = {'action': 'store_true'}
ONE = {'nargs': 1}
LIST = {'nargs': '*', 'default': []}
_FMT = '{0:<19}: {1}'


def __virtual__():
    if not __opts__.get('qvm_emulation_db'):
        return False, 'qvm test double: set qvm_emulation_db in the minion opts'
    if str(__opts__.get('qvm_emulation_version', '4.2')) not in ('4.2', '4.3'):
        return False, 'qvm test double: qvm_emulation_version must be "4.2" or "4.3"'
    return __virtualname__


def _qubes_db():
    name = 'qvm_emulation_qubes_db'
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'qubes_db.py')
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _qd():
    return _qubes_db().Qubesd(__opts__['qvm_emulation_db'])


def _v43() -> bool:
    return str(__opts__.get('qvm_emulation_version', '4.2')) != '4.2'


def _test() -> bool:
    return bool(__opts__.get('test'))


class Status:
    """qubes_utils.Status: a namespace whose truth value is passed()."""

    def __init__(self, **kwargs: Any) -> None:
        self.name, self.result, self.retcode = '', None, 0
        self.stdout = self.stderr = ''
        self.data = None
        self.changes: dict = {}
        self.comment = self.prefix = self.message = self.error_message = ''
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        return 'Status({})'.format(', '.join('{}={!r}'.format(k, v)
                                             for k, v in sorted(vars(self).items())))

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __len__(self) -> int:
        return bool(self.passed())

    def passed(self) -> Any:
        return self.result if self.result is not None else not bool(self.retcode)

    def failed(self) -> bool:
        return (not self.result) if self.result is not None else bool(self.retcode)

    def fmt(self, **given: Any) -> 'Status':
        """Only truthy arguments override; the comment is built once."""
        for key, value in given.items():
            if value:
                setattr(self, key, value)
        if self.comment:
            return self
        prefix = self.prefix
        if prefix is None:
            prefix = '[FAIL] ' if self.failed() else '[PASS] '
        message = self.error_message if self.failed() and self.error_message else self.message
        indent = ' ' * len(prefix) if message else ''
        text = prefix + message if message else ''
        if self.stdout.strip():
            text += '\n' + indent + self.stdout.strip().replace('\n', '\n' + indent)
        if self.failed() and self.stderr.strip():
            text += '\n' + indent + self.stderr.strip().replace('\n', '\n' + indent)
            text = '====== stderr ======\n' + text
        self.comment = text
        return self


def _finalize(data: list, mode: str, cli: bool, test: bool) -> Any:
    """qubes_utils.Status._finalize, including its stderr=stdout slip."""
    data = data or [Status()]
    index = retcode = 0
    if mode == 'last':
        retcode = data[-1].retcode if data[-1].result is None else not data[-1].result
        index = -1 if data[-1].passed() else 0
    comment, changes = '', {}
    for status in data[index:]:
        if status.comment.strip():
            comment += ('\n' if comment else '') + status.comment
        if status.result is not None:
            retcode = not status.result
        elif status.retcode and mode == 'all':
            retcode = status.retcode
        if test:
            status.result = None if status.result or not retcode else False
        else:
            status.result = not retcode
        if status.changes and status.passed():
            changes.setdefault(status.name, {}).update(status.changes)
    if mode == 'last' and not retcode:
        comment = status.comment
    if cli:
        return {'retcode': retcode, 'stdout': status.stdout or comment, 'stderr': status.stdout}
    return Status(name=status.name, retcode=retcode, result=status.result, comment=comment,
                  stdout=status.stdout, stderr=status.stdout, changes=changes)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise CommandExecutionError('{0}: error: {1}\n'.format(self.prog, message))


class _Args(argparse.Namespace):
    _vm = None

    @property
    def vm(self) -> str:
        if not self._vm:
            raise SaltInvocationError(message='Virtual Machine does not exist!')
        return self._vm


def _text(value: Any) -> str:
    if value is None:
        return ''
    return ' '.join(value) if isinstance(value, list) else str(value)


class _QVM:
    """module_utils.ModuleBase: argv building, status list, command runner."""

    def __init__(self, name: str, kwargs: dict) -> None:
        self.name, self.data, self.args = name, [], None
        modes = kwargs.get('status-mode', 'last')
        modes = [modes] if isinstance(modes, str) else list(modes or [])
        self.mode = 'last' if 'last' in modes or 'all' not in modes else 'all'
        self.hook = kwargs.get('run-post-hook')
        self.cli = '__pub_fun' in kwargs

    def parse(self, spec: list, varargs: tuple, kwargs: dict, hide: list | None = None,
              vm: bool = True) -> _Args:
        """Build argv as create_argv_list does (spec order; flags from `flags`)."""
        argv: list = []
        shown: list = []
        index, flags = 0, kwargs.get('flags') or []
        parser = _Parser(prog=self.name, add_help=False)
        for names, opts in spec:
            parser.add_argument(*names, **opts)
            keys = [n.lstrip('-') for n in names]
            dest = opts.get('dest', keys[0].replace('-', '_'))
            values: list = []
            if not names[0].startswith('-'):
                key = next((k for k in (dest, dest.replace('_', '-')) if k in kwargs), None)
                if key:
                    values = [_text(kwargs[key])]
                elif index < len(varargs):
                    values, index = [_text(varargs[index])], index + 1
            else:
                flag = next((k for k in keys if k in flags), None)
                values = ['--' + flag] if flag else []
                key = next((k for k in keys if k in kwargs), None)
                if key:
                    value = kwargs[key]
                    values += ['--' + key] + (value if isinstance(value, list) and value
                                              else [_text(value)])
            argv += values
            if hide is not None and dest not in hide:
                shown += values
        args = parser.parse_args(argv, namespace=_Args())
        args._argv = shown or argv
        name = getattr(args, 'vmname', None)
        if vm and name:
            args._vm = name if _qd().exists(name) else None
        self.args = args
        return args

    def save(self, status: Status | None = None, retcode: Any = None, result: Any = None,
             data: Any = None, prefix: str | None = None, message: str = '',
             error_message: str = '') -> Status:
        status = Status() if status is None else status
        status.name = status.name or self.name
        self.data.append(status.fmt(retcode=retcode, result=result, data=data, prefix=prefix,
                                    message=message, error_message=error_message))
        return status

    def run(self, cmd: str, test_ignore: bool = False, post_hook: Callable | None = None,
            data: Any = None) -> Status:
        if _test() and not test_ignore:
            status = Status(retcode=0, prefix='[TEST] ')
        else:
            status = Status(**_qd().run_tool(cmd))
        for hook in (post_hook, self.hook):
            if hook:
                hook(cmd, status, data)
        return self.save(status, message=cmd + ' ')

    def status(self) -> Any:
        return _finalize(self.data, self.mode, self.cli, _test())


def _is_running(qvm: _QVM) -> Status:
    status = state(qvm.args.vm, 'running')
    return qvm.save(status, retcode=status.retcode)


def _is_halted(qvm: _QVM) -> Status:
    try:
        status = state(qvm.args.vm, 'halted')
        prefix, message = None, ''
    except SaltInvocationError as err:
        status, prefix, message = Status(), '[SKIP] ', err.message
    return qvm.save(status, prefix=prefix, message=message)


def check(vmname, *varargs, **kwargs):
    """qvm-check; positional `exists` (default) or `missing`; flags quiet (+template, R4.3)."""
    qvm = _QVM('qvm.check', kwargs)
    spec = [(('--quiet',), FLAG)] + ([(('--template',), FLAG)] if _v43() else [])
    spec += [(('vmname',), {}), (('check',), {'nargs': '?', 'default': 'exists',
                                              'choices': ('exists', 'missing')})]
    args = qvm.parse(spec, (vmname,) + varargs, kwargs, hide=['check'])

    def flip(cmd, status, data):
        if args.check.lower() == 'missing':
            status.retcode = not status.retcode

    qvm.run('/usr/bin/qvm-check ' + ' '.join(args._argv), post_hook=flip, test_ignore=True)
    return qvm.status()


def state(vmname, *varargs, **kwargs):
    """Power state; positional status (default)|running|halted|transient|paused."""
    qvm = _QVM('qvm.state', kwargs)
    args = qvm.parse([(('vmname',), {}), (('state',), {
        'nargs': '*', 'default': 'status',
        'choices': ('status', 'running', 'halted', 'transient', 'paused')})],
        (vmname,) + varargs, kwargs)
    stdout = _qd().power_state(args.vm)
    power = stdout.strip().lower()
    retcode = 1 if 'status' not in args.state and power not in args.state else 0
    qvm.save(Status(retcode=retcode, data=power, stdout=stdout, stderr='',
                    message='qvm.state ' + ' '.join(args.state)))
    return qvm.status()


def create(vmname, *varargs, **kwargs):
    """qvm-create; template, label, class, mem, vcpus, root-*-from; flags proxy net hvm ..."""
    qvm = _QVM('qvm.create', kwargs)
    spec = [(('--' + f,), FLAG) for f in ('quiet', 'net', 'proxy', 'hvm', 'hvm-template',
                                          'standalone')]
    spec += [(('--template',), ONE), (('--label',), ONE), (('--class',), dict(ONE, dest='klass')),
             (('--mem',), ONE), (('--root-move-from',), ONE), (('--root-copy-from',), ONE),
             (('--vcpus',), ONE), (('vmname',), {})]
    args = qvm.parse(spec, (vmname,) + varargs, kwargs, vm=False)
    vmclass = ('TemplateVM' if args.hvm_template else 'StandaloneVM' if args.standalone
               else args.klass[0] if args.klass else 'AppVM')
    props = {}
    if args.mem:
        props['memory'] = args.mem[0]
    if args.vcpus:
        props['vcpus'] = args.vcpus[0]
    if args.hvm:
        props['virt_mode'] = 'hvm'
    if args.proxy or args.net:
        props['provides_network'] = 'True'
    if args.net:
        props['netvm'] = ''
    options = ['--class=' + vmclass]
    for opt in ('root_move_from', 'root_copy_from', 'template', 'label'):
        if getattr(args, opt):
            options.append('--{}={}'.format(opt.replace('_', '-'), getattr(args, opt)[0]))
    options += ['--property={}={}'.format(k, v) for k, v in props.items()]

    def missing_hook(cmd, status, data):
        # Real quirk: marks an *existing* VM as passed, so create goes on.
        if status.retcode:
            status.result = status.retcode

    missing = qvm.save(check(args.vmname, 'missing', **{'run-post-hook': missing_hook}))
    if missing.failed():
        return qvm.status()
    qvm.run('/usr/bin/qvm-create {} {}'.format(args.vmname, ' '.join(options)))
    return qvm.status()


def remove(vmname, *varargs, **kwargs):
    """Shut down (wait+force) if needed, then qvm-remove --force."""
    qvm = _QVM('qvm.remove', kwargs)
    args = qvm.parse([(('--just-db',), FLAG), (('--quiet',), FLAG), (('--force-root',), FLAG),
                      (('vmname',), {})], (vmname,) + varargs, kwargs)
    if not _is_halted(qvm):
        if qvm.save(shutdown(args.vmname, flags=['wait', 'force'])).failed():
            return qvm.status()
    qvm.run('/usr/bin/qvm-remove --force ' + ' '.join(args._argv))
    if not _test():
        qvm.save(check(args.vmname, 'missing'))
    return qvm.status()


def clone(vmname, clone, *varargs, **kwargs):  # pylint: disable=redefined-outer-name
    """qvm-clone SOURCE NEW; flags shutdown quiet force-root; path."""
    qvm = _QVM('qvm.clone', kwargs)
    args = qvm.parse([(('--shutdown',), FLAG), (('--quiet',), FLAG), (('--force-root',), FLAG),
                      (('--path',), ONE), (('vmname',), {}), (('clone',), {})],
                     (vmname, clone) + varargs, kwargs)
    if '--shutdown' in args._argv:
        args._argv.remove('--shutdown')
    if qvm.save(check(args.clone, 'missing')).failed():
        return qvm.status()
    if _is_halted(qvm).failed() and args.shutdown:
        if qvm.save(shutdown(args.vmname, flags=['wait', 'force'])).failed():
            return qvm.status()
    qvm.run('/usr/bin/qvm-clone ' + ' '.join(args._argv))
    if _test():
        qvm.save(message='VM is set to be cloned')
        return qvm.status()
    qvm.save(check(args.clone, 'exists'))
    return qvm.status()


def _prefs_table() -> list:
    """Option strings of the real 'properties' group, in its order."""
    table = [('autostart',), ('debug',), ('default-user', 'default_user'),
             ('default-dispvm', 'default_dispvm')]
    if _v43():
        table.append(('devices-denied', 'devices_denied'))
    table += [('management-dispvm', 'management_dispvm'), ('guivm',), ('audiovm',),
              ('template-for-dispvms', 'template_for_dispvms', 'dispvm-allowed'),
              ('virt-mode', 'virt_mode'), ('label',), ('last-backup', 'last_backup'),
              ('include-in-backups', 'include_in_backups'),
              ('installed-by-rpm', 'installed_by_rpm'), ('ip',), ('kernel',), ('kernelopts',),
              ('mac',), ('maxmem',), ('memory',), ('netvm',),
              ('pci-strictreset', 'pci_strictreset'), ('pcidevs',),
              ('provides-network', 'provides_network') if _v43() else ('provides-network',),
              ('template',), ('qrexec-timeout', 'qrexec_timeout'), ('updateable',), ('vcpus',)]
    return table


def prefs(vmname, *varargs, **kwargs):
    """List (no keys), get (`get: [k]` or positional keys) or set (`key: value`) prefs.

    Writes happen even under test=True, as in the real module.
    """
    if varargs:
        kwargs['get'] = list(varargs)
    if 'get' in kwargs:
        kwargs.update({k: None for k in kwargs.pop('get')})
        kwargs['action'] = 'get'
    elif 'set' in kwargs:
        kwargs.update({k: v for d in kwargs.pop('set') for k, v in d.items()})
        kwargs['action'] = 'set'
    kwargs.setdefault('status-mode', 'all')
    qvm = _QVM('qvm.create', kwargs)  # sic: the real module names it so
    args = qvm.parse([(('vmname',), {}), (('action',), {
        'nargs': '?', 'default': 'list', 'choices': ('list', 'get', 'gry', 'set')})],
        (vmname,) + varargs, kwargs, hide=['action'])
    table = _prefs_table()
    selected = [next(n for n in names if n in kwargs) for names in table
                if any(n in kwargs for n in names)]
    action = args.action
    if action == 'list':
        action, selected = ('set', selected) if selected else ('list', [n[0] for n in table])
    if kwargs.get('action') == 'get' and varargs:
        for key in [v for v in varargs if v not in selected]:
            qvm.save(Status(retcode=1), message=_FMT.format(key, 'Invalid key!'))
    none_keys = ('netvm', 'guivm', 'audiovm', 'default_dispvm', 'management_dispvm')
    none_keys += ('devices_denied',) if _v43() else ()
    qd = _qd()
    for key in selected:
        dest = key.replace('-', '_')
        dest = {'last_backup': 'backup_timestamp', 'dispvm_allowed': 'template_for_dispvms'}.get(
            dest, dest)
        if dest in ('pcidevs', 'pci_strictreset'):
            if action not in ('list', 'get', 'gry'):
                raise NotImplementedError('qvm test double: {} is not emulated'.format(dest))
            current = [] if dest == 'pcidevs' else True
        elif qd.property_is_default(args.vm, dest):
            current = '*default*'
        else:
            current = qd.get(args.vm, dest)
        if action in ('list', 'get', 'gry'):
            qvm.save(prefix='', message=_FMT.format(dest, current))
            continue
        new = kwargs[key]
        if key in none_keys and new in ('none', ''):
            new = None
        if current == new:
            qvm.save(prefix='[SKIP] ', message=_FMT.format(dest, current))
            continue
        if new == '*default*':
            qd.reset(args.vm, dest)
        else:
            qd.set(args.vm, dest, new)
        qvm.save(retcode=0).changes[dest] = {'old': current, 'new': new}
    return qvm.status()


def _label(value: Any) -> Any:
    if value == '1':
        return 'Enabled'
    if value == '':
        return 'Disabled'
    return 'Missing' if value is None else value


def _dedupe(*lists: list) -> None:
    """The real loop removes repeats while iterating (so it can skip some)."""
    seen: set = set()
    for values in lists:
        for value in values:
            if value not in seen:
                seen.add(value)
            else:
                values.remove(value)


def service(vmname, *varargs, **kwargs):
    """Services as features `service.<name>`: enable '1', disable '', default = delete."""
    if varargs and varargs[0] in ('enable', 'disable', 'defualt') and varargs[1:]:
        kwargs[varargs[0]] = list(varargs[1:])
    kwargs.setdefault('status-mode', 'all')
    qvm = _QVM('qvm.service', kwargs)
    args = qvm.parse([(('vmname',), {}), (('--list',), {'nargs': '*'}), (('--enable',), LIST),
                      (('--disable',), LIST), (('--default',), LIST)], (vmname,) + varargs,
                     kwargs)
    qd = _qd()
    current = {k[len('service.'):]: v for k, v in qd.features(args.vm).items()
               if k.startswith('service.')}
    if args.list is not None or not (args.enable or args.disable or args.default):
        for name, value in current.items():
            qvm.save(prefix='[ENABLED]  ' if value else '[DISABLED] ', message=name)
        return qvm.status()
    _dedupe(args.default, args.disable, args.enable)
    for action, new in (('enable', '1'), ('disable', ''), ('default', None)):
        for name in getattr(args, action):
            old = current.get(name)
            if old == new:
                qvm.save(prefix='[SKIP] ', message="Service already in desired state: "
                         "{0} '{1}' = {2}".format(action.upper(), name, _label(old)))
                continue
            if not _test():
                if new is None:
                    qd.del_feature(args.vm, 'service.' + name)
                else:
                    qd.set_feature(args.vm, 'service.' + name, new)
            qvm.save(retcode=0).changes[name] = {'old': _label(old), 'new': _label(new)}
    return qvm.status()


def features(vmname, *varargs, **kwargs):
    """enable '1' / disable '' / default (delete) lists; `set: [{k: v}]` stores v as given."""
    if varargs and varargs[0] in ('enable', 'disable', 'default') and varargs[1:]:
        kwargs[varargs[0]] = list(varargs[1:])
    elif varargs and varargs[0] == 'set' and varargs[1:]:
        kwargs['set'] = dict(f.split('=', 1) for f in varargs[1:])
    if 'set' in kwargs:
        kwargs['set'] = json.dumps([dict(kwargs['set'][i]) for i in range(len(kwargs['set']))])
    kwargs.setdefault('status-mode', 'all')
    qvm = _QVM('qvm.features', kwargs)
    args = qvm.parse([(('vmname',), {}), (('--list',), {'nargs': '*'}), (('--enable',), LIST),
                      (('--disable',), LIST), (('--default',), LIST), (('--set',), LIST)],
                     (vmname,) + varargs, kwargs)
    qd = _qd()
    current = dict(qd.features(args.vm))
    if args.set:
        args.set = json.loads(args.set[0])
    if args.list is not None or not (args.enable or args.disable or args.default or args.set):
        for name, value in current.items():
            prefix = '[ENABLED]  ' if value == '1' else '[DISABLED] ' if not value else '[SET]      '
            qvm.save(prefix=prefix, message=name + (': ' + value if prefix[1] == 'S' else ''))
        return qvm.status()
    _dedupe(args.default, args.disable, args.enable)
    for action, mapped in (('enable', '1'), ('disable', ''), ('default', None), ('set', None)):
        for item in getattr(args, action):
            name, new = item, mapped
            if action == 'set':
                (name, new), = item.items()
            old = current.get(name)
            if old == new:
                qvm.save(prefix='[SKIP] ', message="Feature already in desired state: "
                         "{0} '{1}' = {2}".format(action.upper(), name, _label(old)))
                continue
            if not _test():
                if new is None:
                    qd.del_feature(args.vm, name)
                else:
                    qd.set_feature(args.vm, name, new)
            qvm.save(retcode=0).changes[name] = {'old': old, 'new': new}
    return qvm.status()


def tags(vmname, *varargs, **kwargs):
    """`add`/`present` and `del`/`absent` tag lists; changes {'old': [..], 'new': [..]}."""
    if varargs and varargs[0] in ('add', 'del', 'present', 'absent') and varargs[1:]:
        kwargs[varargs[0]] = list(varargs[1:])
    qvm = _QVM('qvm.tags', kwargs)
    args = qvm.parse([(('vmname',), {}), (('--list',), {'nargs': '*', 'dest': 'do_list'}),
                      (('--add', '--present'), dict(LIST, dest='do_add')),
                      (('--del', '--absent'), dict(LIST, dest='do_del'))],
                     (vmname,) + varargs, kwargs)
    qd = _qd()
    current = set(qd.tags(args.vm))
    if args.do_list is not None or not (args.do_add or args.do_del):
        for tag in current:
            qvm.save(message=tag)
        return qvm.status()
    _dedupe(args.do_del, args.do_add)
    if _test():
        new = (current | set(args.do_add)) - set(args.do_del)
    else:
        for tag in args.do_add:
            qd.tag(args.vm, tag, True)
        for tag in args.do_del:
            qd.tag(args.vm, tag, False)
        new = set(qd.tags(args.vm))
    if new != current:
        qvm.save(retcode=0).changes.update(old=sorted(current), new=sorted(new))
    else:
        qvm.save(prefix='[SKIP] ', message='All requested tags already set: '
                 + ','.join(sorted(current)))
    return qvm.status()


def start(vmname, *varargs, **kwargs):
    """qvm-start unless running (paused/transient handling not emulated)."""
    qvm = _QVM('qvm.start', kwargs)
    spec = [(('--' + f,), FLAG) for f in ('quiet', 'install-windows-tools', 'debug')]
    spec += [(('--' + o,), {}) for o in ('drive', 'hddisk', 'cdrom', 'custom-config')]
    args = qvm.parse(spec + [(('vmname',), {})], (vmname,) + varargs, kwargs)
    if _is_running(qvm):
        return qvm.status()
    qvm.run('/usr/bin/qvm-start ' + ' '.join(args._argv))
    if not _test():
        _is_running(qvm)
    return qvm.status()


def shutdown(vmname, *varargs, **kwargs):
    """qvm-shutdown (or qvm-kill with flag kill); flags quiet force wait all; exclude."""
    qvm = _QVM('qvm.shutdown', kwargs)
    spec = [(('--' + f,), FLAG) for f in ('quiet', 'kill', 'force', 'wait', 'all')]
    spec += [(('--exclude',), {'action': 'store', 'default': [], 'nargs': '*'}),
             (('vmname',), {})]
    args = qvm.parse(spec, (vmname,) + varargs, kwargs)
    if _test():
        qvm.save(message='VM is set to be killed' if args.kill else 'VM is set for shutdown')
        return qvm.status()
    if _is_halted(qvm):
        return qvm.status()
    if args.kill:
        qvm.run('/usr/bin/qvm-kill ' + args.vmname)
    else:
        qvm.run('/usr/bin/qvm-shutdown ' + ' '.join(args._argv))
    if not _is_halted(qvm) and args.force:
        qvm.run('/usr/bin/qvm-kill ' + args.vmname)
    _is_halted(qvm)
    return qvm.status()


def kill(vmname, *varargs, **kwargs):
    """shutdown with flag kill (appended to the caller's flags list, as the real one does)."""
    qvm = _QVM('qvm.kill', kwargs)
    args = qvm.parse([(('vmname',), {})], (vmname,) + varargs, kwargs)
    kwargs.setdefault('flags', [])
    kwargs['flags'].append('kill')
    qvm.save(shutdown(args.vmname, *varargs, **kwargs))
    return qvm.status()


def template_info(name, **kwargs):
    """`qvm-template info --installed`: dict of the template, {} if not managed by it."""
    ret = _qd().run_tool('qvm-template info --installed --machine-readable-json {}'.format(name))
    if ret['retcode']:
        return {}
    info = json.loads(ret['stdout'])
    assert 'installed' in info and len(info['installed']) == 1
    return info['installed'][0]


def template_install(name, version=None, fromrepo=None, pool=None, **kwargs):
    """qvm-template install (no test guard here, as in the real module)."""
    cmd = 'qvm-template install --quiet'
    cmd += ' --repoid={}'.format(fromrepo) if fromrepo else ''
    cmd += ' --pool={}'.format(pool) if pool else ''
    cmd += ' ' + name + ('-' + version if version else '')
    ret = _qd().run_tool(cmd)
    if ret['retcode']:
        raise CommandExecutionError(message='Failed to install template {}'.format(name),
                                    info=ret['stderr'])
    return {'info': ret['stderr']}
